//! One error type for the whole library: each variant says what was expected and what was found.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, EmError>;

/// Everything that can go wrong in the library, phrased for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum EmError {
    /// A tensor or array had the wrong shape.
    #[error("shape mismatch in {context}: expected {expected}, found {found}")]
    Shape {
        /// Where the mismatch was detected.
        context: String,
        /// The shape that was required.
        expected: String,
        /// The shape that was given.
        found: String,
    },
    /// A numeric argument or setting was outside its valid range.
    #[error("invalid value for {name}: expected {expected}, found {found}")]
    InvalidValue {
        /// The argument or config key.
        name: String,
        /// The admissible range or form.
        expected: String,
        /// What was given.
        found: String,
    },
    /// Input data held NaN or infinite values.
    #[error("non-finite value in {context}: row {row}, column {col} is {value}")]
    NonFinite {
        /// Which data set or tensor.
        context: String,
        /// Row of the first offending entry.
        row: usize,
        /// Column of the first offending entry.
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// Training produced NaN/Inf; the last good checkpoint is kept.
    #[error("training diverged at step {step} ({phase}): {what} is {value}; last good checkpoint: {last_good}")]
    Diverged {
        /// The optimisation step (1-based, counted over both phases) that failed.
        step: u64,
        /// `phase1` or `phase2`.
        phase: String,
        /// Which quantity became non-finite.
        what: String,
        /// Its value.
        value: f64,
        /// Path of the last checkpoint written before the failure, or "none".
        last_good: String,
    },
    /// A file could not be parsed.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong, with the expected form.
        reason: String,
    },
    /// A configuration problem, naming the offending key.
    #[error("config error at `{key}`: {reason}")]
    Config {
        /// Dotted key path, e.g. `train.lr`.
        key: String,
        /// What was expected and found, and a suggestion where possible.
        reason: String,
    },
    /// A checkpoint does not fit the model it is loaded into, or is corrupt.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("plotting {path}: {reason}")]
    Plot {
        /// The image being written.
        path: PathBuf,
        /// The plotting backend's message.
        reason: String,
    },
}

impl EmError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EmError::Io {
            path: path.into(),
            source,
        }
    }

    /// A configuration problem at a dotted key ([`EmError::Config`]).
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        EmError::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`EmError::InvalidValue`].
    pub fn invalid(
        name: impl Into<String>,
        expected: impl Into<String>,
        found: impl std::fmt::Display,
    ) -> Self {
        EmError::InvalidValue {
            name: name.into(),
            expected: expected.into(),
            found: found.to_string(),
        }
    }

    /// Shorthand for [`EmError::Shape`].
    pub fn shape(
        context: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        EmError::Shape {
            context: context.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}
