//! Located config errors and warnings, rendered the way a compiler would show them.
//!
//! Every problem found while loading a config becomes a [`Diagnostic`]: a severity, a
//! message and, when known, the line and column in the file. A [`Report`] collects all of
//! them so that the operator sees every mistake at once, each followed by the offending
//! source line and a caret.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A line and column in the config file, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: u64,
    pub column: u64,
}

impl Location {
    /// Converts serde-saphyr's location; its "unknown" location becomes `None`.
    pub fn from_yaml(location: serde_saphyr::Location) -> Option<Self> {
        (location.line() > 0).then(|| Self {
            line: location.line(),
            column: location.column().max(1),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Option<Location>,
    pub message: String,
}

/// All diagnostics for one config file, with the source kept for snippets.
#[derive(Debug, Clone)]
pub struct Report {
    path: PathBuf,
    source: String,
    items: Vec<Diagnostic>,
}

impl Report {
    pub fn new(path: &Path, source: &str) -> Self {
        Self {
            path: path.to_owned(),
            source: source.to_owned(),
            items: Vec::new(),
        }
    }

    pub fn error(&mut self, location: Option<Location>, message: impl Into<String>) {
        self.push(Severity::Error, location, message.into());
    }

    pub fn warning(&mut self, location: Option<Location>, message: impl Into<String>) {
        self.push(Severity::Warning, location, message.into());
    }

    fn push(&mut self, severity: Severity, location: Option<Location>, message: String) {
        self.items.push(Diagnostic {
            severity,
            location,
            message,
        });
    }

    pub fn items(&self) -> &[Diagnostic] {
        &self.items
    }

    pub fn error_count(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warning_count(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.items.iter().filter(|d| d.severity == severity).count()
    }

    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn source_line(&self, line: u64) -> Option<&str> {
        let index = usize::try_from(line.checked_sub(1)?).ok()?;
        self.source.lines().nth(index)
    }
}

impl fmt::Display for Report {
    /// Renders every diagnostic in file order (unlocated ones first), then a count line
    /// when there are errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<&Diagnostic> = self.items.iter().collect();
        items.sort_by_key(|d| d.location.map(|l| (l.line, l.column)));
        for d in items {
            let label = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let mut lines = d.message.lines();
            writeln!(f, "{label}: {}", lines.next().unwrap_or(""))?;
            for more in lines {
                writeln!(f, "       {more}")?;
            }
            match d.location {
                Some(loc) => {
                    writeln!(f, "  --> {}:{}:{}", self.path.display(), loc.line, loc.column)?;
                    if let Some(text) = self.source_line(loc.line) {
                        let gutter = loc.line.to_string().len();
                        let pad = " ".repeat(gutter);
                        let caret_pad: String = text
                            .chars()
                            .take(usize::try_from(loc.column - 1).unwrap_or(0))
                            .map(|c| if c == '\t' { '\t' } else { ' ' })
                            .collect();
                        writeln!(f, "{pad} |")?;
                        writeln!(f, "{} | {text}", loc.line)?;
                        writeln!(f, "{pad} | {caret_pad}^")?;
                    }
                }
                None => writeln!(f, "  --> {}", self.path.display())?,
            }
            writeln!(f)?;
        }
        let errors = self.error_count();
        if errors > 0 {
            let plural = if errors == 1 { "" } else { "s" };
            writeln!(
                f,
                "{}: {errors} error{plural}; the config was not loaded",
                self.path.display()
            )?;
        }
        Ok(())
    }
}
