//! Prometheus text exposition format: escaping, family headers and samples.

use std::fmt::Write;

/// Escapes a label value for the Prometheus text format.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Appends a family's `# HELP` and `# TYPE` lines to `out`.
pub fn write_family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Appends one sample line to `out`; `labels` are (name, unescaped value) pairs.
pub fn write_sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Writes metric families in the Prometheus text exposition format (version 0.0.4).
#[derive(Debug, Default)]
pub struct PromWriter {
    out: String,
}

impl PromWriter {
    pub fn new() -> Self {
        PromWriter::default()
    }

    /// Starts a family with its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        write_family(&mut self.out, name, kind, help);
    }

    /// Writes one sample; `labels` are (name, unescaped value) pairs.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        write_sample(&mut self.out, name, labels, value);
    }

    /// The text written so far, for renderers that write the format themselves.
    pub fn buffer(&mut self) -> &mut String {
        &mut self.out
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_and_escapes_labels() {
        let mut w = PromWriter::new();
        w.family("x_total", "counter", "Things.");
        w.sample("x_total", &[("a", "q\"uo\\te\n")], 3);
        w.sample("x_total", &[], 1);
        assert_eq!(
            w.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"uo\\\\te\\n\"} 3\nx_total 1\n"
        );
    }
}
