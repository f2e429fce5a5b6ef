use crate::{Config, ConfigError, LoadError, locate, validate};
use std::hash::{Hash, Hasher};
use std::path::Path;

/// A validated config with the identity of the text it came from.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    pub config: Config,
    /// Hex hash of the file's bytes; shown in `/config` and logs so operators can tell versions apart.
    pub hash: String,
    /// File name the config came from (or `<embedded>`).
    pub source: String,
}

impl LoadedConfig {
    /// Parses and validates `text`, naming `source` in errors.
    pub fn from_str(text: &str, source: &str) -> Result<Self, LoadError> {
        let config = parse_str(text, source).map_err(LoadError::Invalid)?;
        Ok(LoadedConfig {
            config,
            hash: content_hash(text.as_bytes()),
            source: source.to_string(),
        })
    }
}

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<LoadedConfig, LoadError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        file: file.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        LoadError::Invalid(vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message: "file is not valid UTF-8".into(),
        }])
    })?;
    LoadedConfig::from_str(&text, &file)
}

/// Hash of config text, as 16 hex digits.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    // SipHash with fixed keys: stable across runs of the same build, which is all a version tag needs.
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Parses YAML text into a [`Config`] and validates it, returning every problem found.
pub fn parse_str(text: &str, file: &str) -> Result<Config, Vec<ConfigError>> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    // A field error is kept as the reader raised it, before serde-saphyr decorates it; its field
    // path is worked out only now that there is one (see `locate`).
    let mut field_error: Option<ConfigError> = None;
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        <Config as serde::Deserialize>::deserialize(de).inspect_err(|e| {
            field_error = Some(from_yaml_error(e, String::new(), file));
        })
    });
    let config = match parsed {
        Ok(config) => config,
        Err(e) => {
            let error = match field_error {
                Some(mut error) => {
                    error.path = locate::error_path(text, error.line, error.column, &error.message);
                    error
                }
                // The document was read, and what follows it is not valid.
                None => from_yaml_error(&e, String::new(), file),
            };
            return Err(vec![error]);
        }
    };
    let errors = validate::validate(&config, file);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

fn from_yaml_error(e: &serde_saphyr::Error, path: String, file: &str) -> ConfigError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    ConfigError {
        file: file.to_string(),
        line,
        column,
        path,
        message: plain_message(e),
    }
}

/// The error's first line without the position the library appends; we print our own.
pub(crate) fn plain_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    let first = first.trim_start_matches("error: ");
    // Drop a leading "line N column M: " too.
    match first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((pos, msg)) if pos.contains("column") => msg.to_string(),
        _ => first.to_string(),
    }
}
