//! Turning secret data into file bytes.
//!
//! The default format is pretty JSON of the secret's key/value map: two-space indent,
//! keys in `serde_json`'s map order (sorted, with default features) and a trailing
//! newline, so the same data always renders to the same bytes and an unchanged secret
//! never rewrites its file. Other formats and templates plug in beside [`json`].

use serde_json::Value;

/// Why data could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Serialization failed; with a `Value` input this does not happen in practice.
    #[error("rendering as JSON failed")]
    Json(#[source] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Pretty JSON with a trailing newline.
pub fn json(data: &Value) -> Result<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(data).map_err(Error::Json)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sorted_pretty_json_with_a_trailing_newline() {
        let data: Value =
            serde_json::from_str(r#"{"user":"u","password":"p","n":{"b":1,"a":[true]}}"#).unwrap();
        let out = String::from_utf8(json(&data).unwrap()).unwrap();
        assert_eq!(
            out,
            "{\n  \"n\": {\n    \"a\": [\n      true\n    ],\n    \"b\": 1\n  },\n  \"password\": \"p\",\n  \"user\": \"u\"\n}\n"
        );
    }

    #[test]
    fn the_same_data_renders_to_the_same_bytes() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(json(&a).unwrap(), json(&b).unwrap());
    }
}
