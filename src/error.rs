//! The crate's error type: everything a user can get wrong, named plainly.

use std::path::PathBuf;

/// Errors returned by `latent`'s public functions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A data file exists but its contents are wrong (truncated, corrupt, bad header).
    #[error("{path}: {what}")]
    Data {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A data file decoded but does not match its canonical checksum.
    #[error(
        "{path}: MD5 of the decompressed file is {found}, expected {expected} (corrupt or not the canonical file)"
    )]
    Checksum {
        /// The file concerned.
        path: PathBuf,
        /// The canonical MD5.
        expected: String,
        /// The MD5 found.
        found: String,
    },
    /// An array passed to a public function has the wrong shape.
    #[error("shape mismatch in {context}: expected {expected}, got {found:?}")]
    Shape {
        /// Which function and argument.
        context: String,
        /// The expected shape, in words.
        expected: String,
        /// The shape received.
        found: Vec<usize>,
    },
    /// A value that must be finite is NaN or infinite.
    #[error("non-finite value in {0}")]
    NonFinite(String),
    /// An argument is out of its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The requested compute device is not usable.
    #[error("{0}")]
    Device(String),
    /// A numerical routine failed (an eigensolver that did not converge, say).
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// Drawing or writing a figure failed.
    #[error("plot {path}: {what}")]
    Plot {
        /// The PNG being written.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
}

/// Shorthand for `Result<T, latent::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A content error in the data file `path`.
    pub fn data(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            what: what.into(),
        }
    }

    /// A shape error at a public boundary.
    pub fn shape(context: impl Into<String>, expected: impl Into<String>, found: &[usize]) -> Self {
        Error::Shape {
            context: context.into(),
            expected: expected.into(),
            found: found.to_vec(),
        }
    }
}
