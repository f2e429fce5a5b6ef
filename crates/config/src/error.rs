use std::fmt;

/// One problem in a config file: where it is (file, line, column, field path) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// Field path such as `listeners[0].routes[1].split[0].cluster`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Why a config file could not be loaded: unreadable, or a list of every problem found in it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", list(.0))]
    Invalid(Vec<ConfigError>),
}

impl LoadError {
    /// Every problem as its own line, for logs and the `validate` command.
    pub fn messages(&self) -> Vec<String> {
        match self {
            LoadError::Io { .. } => vec![self.to_string()],
            LoadError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }
}

fn list(errors: &[ConfigError]) -> String {
    let mut out = format!("{} error(s) in config:", errors.len());
    for e in errors {
        out.push_str("\n  ");
        out.push_str(&e.to_string());
    }
    out
}
