/*!
The crate's error type. Every error that comes from user input names its origin: the file, and where
it applies the field, column or row, so that a malformed config, a corrupt data file or a checkpoint of
the wrong shape can be fixed from the message alone. Library code never panics on user input.
*/

use std::fmt;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in a data file a problem is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub column: Option<String>,
    /// 1-based data row (the header is row 0), when known.
    pub row: Option<usize>,
    pub symbol: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.column {
            write!(f, ", column `{c}`")?;
        }
        if let Some(r) = self.row {
            write!(f, ", row {r}")?;
        }
        if let Some(s) = &self.symbol {
            write!(f, ", symbol `{s}`")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A malformed or out-of-range configuration.
    #[error("config {origin}{}: {message}", field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
    Config {
        origin: String,
        field: Option<String>,
        message: String,
    },

    /// A data file that cannot be used as market data.
    #[error("data {}{loc}: {message}", file.display())]
    Data {
        file: PathBuf,
        loc: Location,
        message: String,
    },

    /// A checkpoint or tensor whose shape does not match the configuration.
    #[error("{origin}: `{name}` has shape {got:?}, the config needs {expected:?}")]
    Shape {
        origin: String,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// An argument outside its domain (an action index, a buffer of the wrong length, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A backend that cannot run here (no NVIDIA driver, kernel compile failure, ...).
    #[error("backend {backend}: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A config parse error; `span` (byte range in the text) is kept in the message when present.
    pub fn config(origin: &str, message: String, span: Option<std::ops::Range<usize>>) -> Self {
        let message = match span {
            Some(s) => format!("{message} (at bytes {}..{})", s.start, s.end),
            None => message,
        };
        Error::Config {
            origin: origin.to_string(),
            field: None,
            message,
        }
    }

    pub fn config_field(origin: &str, field: &str, message: String) -> Self {
        Error::Config {
            origin: origin.to_string(),
            field: Some(field.to_string()),
            message,
        }
    }

    pub fn data(file: impl AsRef<Path>, loc: Location, message: impl Into<String>) -> Self {
        Error::Data {
            file: file.as_ref().to_path_buf(),
            loc,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }
}
