/*!
The crate's error type, in the style of `regex` / `ripgrep`: one public [`Error`] with a matchable
[`ErrorKind`], the context that locates the problem (the file, and where it applies the field,
column, row or symbol), and the foreign error that caused it, if any, as [`std::error::Error::source`]
(never as a public variant, so that a dependency's error type is not part of this crate's API).

Every error that comes from user input names its origin, so that a malformed config, a corrupt data
file or a checkpoint of the wrong shape can be fixed from the message alone. Library code never
panics on user input.

```
use marl_trade::{Config, ErrorKind};

let err = Config::from_toml_str("[env]\nscenarioz = 3\n", "my.toml").unwrap_err();
assert_eq!(err.kind(), ErrorKind::Config);
assert!(err.to_string().contains("my.toml"));
```
*/

use std::fmt;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, for callers that react to some errors and not others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading or writing a file failed (the path is in [`Error::file`], the OS error is the source).
    Io,
    /// A malformed or out-of-range configuration (file and field named).
    Config,
    /// A data file that cannot be used as market data (file, column, row or symbol named).
    Data,
    /// A tensor or buffer whose shape does not fit (a checkpoint of the wrong size, ...).
    Shape,
    /// A checkpoint or run directory that cannot be read back (missing or corrupt files).
    Checkpoint,
    /// A checkpoint trained on other symbols than the data it is asked to trade.
    SymbolMismatch,
    /// A run directory already holds a run (neither resume nor force was asked for).
    RunExists,
    /// A resumed run whose configuration differs from the one it was started with.
    RunMismatch,
    /// A saved environment state that is old, foreign, truncated or of another size.
    EnvState,
    /// A backend that cannot run here (no NVIDIA driver, built without the feature, kernel
    /// compile failure).
    BackendUnavailable,
    /// An argument outside its domain (an action index, a buffer of the wrong length, a call out
    /// of order).
    InvalidArgument,
    /// A tensor operation failed (the candle error is the source).
    Model,
    /// Serialising or parsing JSON failed.
    Json,
    /// A supervised-prior cache built from other data or other models than the ones it is used
    /// with (`priors`, `sl`), or malformed.
    StalePriors,
}

impl ErrorKind {
    fn label(self) -> &'static str {
        match self {
            ErrorKind::Io => "I/O",
            ErrorKind::Config => "config",
            ErrorKind::Data => "data",
            ErrorKind::Shape => "shape",
            ErrorKind::Checkpoint => "checkpoint",
            ErrorKind::SymbolMismatch => "symbols",
            ErrorKind::RunExists => "run exists",
            ErrorKind::RunMismatch => "run",
            ErrorKind::EnvState => "env state",
            ErrorKind::BackendUnavailable => "backend",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Model => "model",
            ErrorKind::Json => "json",
            ErrorKind::StalePriors => "SL priors",
        }
    }
}

/// Where in a data file a problem is (column, 1-based row, symbol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The column, by name.
    pub column: Option<String>,
    /// 1-based data row (the header is row 0), when known.
    pub row: Option<usize>,
    /// The symbol the row belongs to.
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

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The tensor of a [`ErrorKind::Shape`] error and its two shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The tensor's name (`actor.l0.bias`).
    pub name: String,
    /// The shape the configuration needs.
    pub expected: Vec<usize>,
    /// The shape found.
    pub got: Vec<usize>,
}

/// The crate's error: a kind, a message, the context that locates it, and an optional source.
///
/// Displayed as `<origin>[, field `f`][, column `c`][, row r][, symbol `s`]: <message>`, where the
/// origin is the file (or the named source of a config string) when there is one. One pointer wide:
/// the details live behind a `Box`, so `Result<T>` stays small on the hot paths.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    message: String,
    origin: Option<String>,
    file: Option<PathBuf>,
    field: Option<String>,
    loc: Location,
    shape: Option<Box<ShapeMismatch>>,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` with `message` and no context.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            kind,
            message: message.into(),
            origin: None,
            file: None,
            field: None,
            loc: Location::default(),
            shape: None,
            source: None,
        }))
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message without the context.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The file the error is about, when there is one.
    pub fn file(&self) -> Option<&Path> {
        self.0.file.as_deref()
    }

    /// The config field (`section.field`), when the error is about one.
    pub fn field(&self) -> Option<&str> {
        self.0.field.as_deref()
    }

    /// Column, row and symbol of a data error.
    pub fn location(&self) -> &Location {
        &self.0.loc
    }

    /// The tensor and shapes of a [`ErrorKind::Shape`] error.
    pub fn shape_mismatch(&self) -> Option<&ShapeMismatch> {
        self.0.shape.as_deref()
    }

    /// Attach the file the error is about.
    pub fn with_file(mut self, file: impl AsRef<Path>) -> Self {
        self.0.file = Some(file.as_ref().to_path_buf());
        self
    }

    /// Attach a named origin that is not a file (a config string, `--set`).
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.0.origin = Some(origin.into());
        self
    }

    /// Attach the config field the error is about.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    /// Attach the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Box::new(source));
        self
    }

    /// Reading or writing `path` failed.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        let message = source.to_string();
        Self::new(ErrorKind::Io, message)
            .with_file(path)
            .with_source(source)
    }

    /// A config parse error in `origin`; `span` (byte range in the text) is kept in the message.
    pub fn config(origin: &str, message: String, span: Option<std::ops::Range<usize>>) -> Self {
        let message = match span {
            Some(s) => format!("{message} (at bytes {}..{})", s.start, s.end),
            None => message,
        };
        Self::new(ErrorKind::Config, message).with_origin(origin)
    }

    /// A config field of `origin` that is out of range or inconsistent.
    pub fn config_field(origin: &str, field: &str, message: String) -> Self {
        Self::new(ErrorKind::Config, message)
            .with_origin(origin)
            .with_field(field)
    }

    /// A data file that cannot be used, at `loc`.
    pub fn data(file: impl AsRef<Path>, loc: Location, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::Data, message).with_file(file);
        e.0.loc = loc;
        e
    }

    /// Tensor `name` of `origin` has shape `got` where `expected` is needed.
    pub fn shape(origin: impl Into<String>, name: &str, expected: &[usize], got: &[usize]) -> Self {
        let mut e = Self::new(
            ErrorKind::Shape,
            format!("`{name}` has shape {got:?}, the config needs {expected:?}"),
        )
        .with_origin(origin);
        e.0.shape = Some(Box::new(ShapeMismatch {
            name: name.to_string(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        }));
        e
    }

    /// A backend that cannot run here.
    pub fn backend(backend: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BackendUnavailable, message).with_origin(format!("backend {backend}"))
    }

    /// An argument outside its domain.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// A checkpoint that cannot be read back.
    pub fn checkpoint(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Checkpoint, message).with_file(path)
    }

    /// A saved environment state that cannot be loaded.
    pub fn env_state(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::EnvState, message)
    }

    /// A JSON (de)serialisation failure about `what`.
    pub fn json(what: &str, source: serde_json::Error) -> Self {
        Self::new(ErrorKind::Json, format!("{what}: {source}")).with_source(source)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut head = false;
        if let Some(o) = &self.0.origin {
            if self.0.kind == ErrorKind::Config {
                write!(f, "config {o}")?;
            } else {
                write!(f, "{o}")?;
            }
            head = true;
        }
        if let Some(p) = &self.0.file {
            if head {
                write!(f, " ({})", p.display())?;
            } else if self.0.kind == ErrorKind::Data {
                write!(f, "data {}", p.display())?;
            } else {
                write!(f, "{}", p.display())?;
            }
            head = true;
        }
        if let Some(field) = &self.0.field {
            write!(f, "{}field `{field}`", if head { ", " } else { "" })?;
            head = true;
        }
        if self.0.loc != Location::default() {
            write!(f, "{}", self.0.loc)?;
            head = true;
        }
        if !head {
            write!(f, "{}", self.0.kind.label())?;
        }
        write!(f, ": {}", self.0.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind)
            .field("message", &self.0.message);
        if let Some(o) = &self.0.origin {
            d.field("origin", o);
        }
        if let Some(p) = &self.0.file {
            d.field("file", p);
        }
        if let Some(x) = &self.0.field {
            d.field("field", x);
        }
        if self.0.loc != Location::default() {
            d.field("location", &self.0.loc);
        }
        if let Some(s) = &self.0.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Self::new(ErrorKind::Model, e.to_string()).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_context() {
        let e = Error::config_field("a.toml", "env.scenarios", "must be >= 1".into());
        assert_eq!(
            e.to_string(),
            "config a.toml, field `env.scenarios`: must be >= 1"
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(e.field(), Some("env.scenarios"));
        let loc = Location {
            column: Some("close".into()),
            row: Some(3),
            symbol: None,
        };
        let e = Error::data("x.csv", loc, "NaN price");
        assert_eq!(
            e.to_string(),
            "data x.csv, column `close`, row 3: NaN price"
        );
        assert_eq!(e.location().row, Some(3));
        let e = Error::invalid("bad");
        assert_eq!(e.to_string(), "invalid argument: bad");
    }

    #[test]
    fn foreign_errors_are_sources() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = Error::io("/nope", io);
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.file(), Some(Path::new("/nope")));
        assert!(e.source().is_some());
        assert_eq!(e.to_string(), "/nope: gone");
    }
}
