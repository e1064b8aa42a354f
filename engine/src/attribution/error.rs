//! What can go wrong building or querying an index, or attributing an output.

/// An attribution failure; each names what was at fault.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("index {index}: {message}")]
    Index { index: String, message: String },
    #[error("index {0} does not exist")]
    IndexNotFound(String),
    #[error("no attribution {0}")]
    AttributionNotFound(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("corpus: {0}")]
    Corpus(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl AttributionError {
    pub(crate) fn index(index: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::Index {
            index: index.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn invalid(field: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Invalid {
            field,
            message: message.to_string(),
        }
    }
}
