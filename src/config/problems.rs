//! What is wrong with a configuration: every problem at once, each with its key and its fix.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    /// The value as written, when there was one.
    pub value: Option<String>,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} = {value}: {}. Fix: {}", self.key, self.problem, self.fix),
            None => write!(f, "{}: {}. Fix: {}", self.key, self.problem, self.fix),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}. Fix: check the path given to --config")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}
