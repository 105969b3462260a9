//! Turning secret data into file bytes, per the secret's [`Format`].
//!
//! Every format writes keys in sorted order (serde_json's map order with default
//! features), so the same data always renders to the same bytes and an unchanged secret
//! never rewrites its file. Errors name a key, never a value.
//!
//! - `json`: pretty JSON (two-space indent) with a trailing newline.
//! - `yaml`: one `"key": value` line per key, the key and value written as JSON. JSON
//!   scalars and flow collections are valid YAML, and quoting every key and string keeps
//!   YAML's implicit typing (`no`, `1e3`, `~`) from changing what a value means.
//! - `dotenv`: `KEY="value"` lines; `\`, `"`, `$`, `` ` `` and newlines escaped. Keys
//!   must be shell identifiers.
//! - `properties`: `key=value` lines escaped as `java.util.Properties` reads them
//!   (ISO-8859-1 with `\uXXXX` for anything else).
//! - `key`: the raw value of one key, no newline added (a string as is, anything else as
//!   compact JSON).

use serde_json::{Map, Value};

use crate::contract::config::Format;

/// Why data could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The secret's data is not a key/value map, so a per-key format cannot apply.
    #[error("the secret's data is not a key/value map; use format json")]
    NotAMap,
    /// Format `key` names a key the secret does not have.
    #[error("the secret has no key {0:?}")]
    MissingKey(String),
    /// A key cannot be a dotenv variable name.
    #[error(
        "key {0:?} is not a valid environment variable name for format dotenv (letters, digits, _; not starting with a digit)"
    )]
    BadEnvKey(String),
    /// Serialization failed; with a `Value` input this does not happen in practice.
    #[error("rendering as JSON failed")]
    Json(#[source] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Renders `data` (the secret's key/value map) in `format`.
pub fn render(format: &Format, data: &Value) -> Result<Vec<u8>> {
    match format {
        Format::Json => json(data),
        Format::Yaml => yaml(as_map(data)?),
        Format::Dotenv => dotenv(as_map(data)?),
        Format::Properties => Ok(properties(as_map(data)?)),
        Format::Key(key) => match as_map(data)?.get(key) {
            Some(Value::String(s)) => Ok(s.clone().into_bytes()),
            Some(other) => serde_json::to_vec(other).map_err(Error::Json),
            None => Err(Error::MissingKey(key.clone())),
        },
    }
}

fn as_map(data: &Value) -> Result<&Map<String, Value>> {
    data.as_object().ok_or(Error::NotAMap)
}

/// Pretty JSON with a trailing newline.
pub fn json(data: &Value) -> Result<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(data).map_err(Error::Json)?;
    out.push(b'\n');
    Ok(out)
}

fn yaml(map: &Map<String, Value>) -> Result<Vec<u8>> {
    if map.is_empty() {
        return Ok(b"{}\n".to_vec());
    }
    let mut out = Vec::new();
    for (key, value) in map {
        serde_json::to_writer(&mut out, key).map_err(Error::Json)?;
        out.extend_from_slice(b": ");
        serde_json::to_writer(&mut out, value).map_err(Error::Json)?;
        out.push(b'\n');
    }
    Ok(out)
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn dotenv(map: &Map<String, Value>) -> Result<Vec<u8>> {
    let mut out = String::new();
    for (key, value) in map {
        let mut chars = key.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::BadEnvKey(key.clone()));
        }
        out.push_str(key);
        out.push_str("=\"");
        for c in scalar_text(value).chars() {
            match c {
                '\\' | '"' | '$' | '`' => {
                    out.push('\\');
                    out.push(c);
                }
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push_str("\"\n");
    }
    Ok(out.into_bytes())
}

fn properties(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = String::new();
    for (key, value) in map {
        escape_property(&mut out, key, true);
        out.push('=');
        escape_property(&mut out, &scalar_text(value), false);
        out.push('\n');
    }
    out.into_bytes()
}

fn escape_property(out: &mut String, text: &str, is_key: bool) {
    for (i, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{c}' => out.push_str("\\f"),
            // Leading spaces of a value would be skipped by the reader; any space in a
            // key would end it.
            ' ' if is_key || i == 0 => out.push_str("\\ "),
            '=' | ':' | '#' | '!' if is_key || i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c if (' '..='~').contains(&c) => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(format: Format, data: Value) -> String {
        String::from_utf8(render(&format, &data).unwrap()).unwrap()
    }

    #[test]
    fn renders_sorted_pretty_json_with_a_trailing_newline() {
        let data = json!({"user": "u", "password": "p", "n": {"b": 1, "a": [true]}});
        assert_eq!(
            text(Format::Json, data),
            "{\n  \"n\": {\n    \"a\": [\n      true\n    ],\n    \"b\": 1\n  },\n  \"password\": \"p\",\n  \"user\": \"u\"\n}\n"
        );
    }

    #[test]
    fn the_same_data_renders_to_the_same_bytes() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        for format in [
            Format::Json,
            Format::Yaml,
            Format::Dotenv,
            Format::Properties,
        ] {
            assert_eq!(render(&format, &a).unwrap(), render(&format, &b).unwrap());
        }
    }

    #[test]
    fn yaml_quotes_keys_and_strings_so_nothing_is_retyped() {
        let data = json!({"enabled": "no", "port": 5432, "tags": ["a"], "x y": "line\nbreak"});
        assert_eq!(
            text(Format::Yaml, data),
            "\"enabled\": \"no\"\n\"port\": 5432\n\"tags\": [\"a\"]\n\"x y\": \"line\\nbreak\"\n"
        );
        assert_eq!(text(Format::Yaml, json!({})), "{}\n");
    }

    #[test]
    fn dotenv_escapes_what_a_shell_would_expand() {
        let data = json!({"A": "p$w`d\"\\x\ny", "N": 3});
        assert_eq!(
            text(Format::Dotenv, data),
            "A=\"p\\$w\\`d\\\"\\\\x\\ny\"\nN=\"3\"\n"
        );
        let err = render(&Format::Dotenv, &json!({"1bad": "v-secret"})).unwrap_err();
        assert!(err.to_string().contains("\"1bad\""), "{err}");
        assert!(!err.to_string().contains("v-secret"), "{err}");
    }

    #[test]
    fn properties_escape_like_java_properties() {
        let data = json!({"a key=": " lead=x:y", "u": "é€"});
        assert_eq!(
            text(Format::Properties, data),
            "a\\ key\\==\\ lead=x:y\nu=\\u00E9\\u20AC\n"
        );
    }

    #[test]
    fn key_format_writes_the_raw_value_or_names_the_missing_key() {
        let data = json!({"cert": "-----BEGIN-----\n", "n": 5});
        assert_eq!(
            text(Format::Key("cert".into()), data.clone()),
            "-----BEGIN-----\n"
        );
        assert_eq!(text(Format::Key("n".into()), data.clone()), "5");
        let err = render(&Format::Key("nope".into()), &data).unwrap_err();
        assert_eq!(err.to_string(), "the secret has no key \"nope\"");
    }
}
