//! `${VAR}` and `${VAR:-default}` in config values, so secrets need not sit in the file.
//!
//! Only the braced form is recognised: a bare `$` stays as it is, because rule patterns use
//! `$` as an anchor. `$${` writes a literal `${`. As in the shell, `:-` uses the default
//! when the variable is unset or empty.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExpandError {
    #[error(
        "environment variable `{0}` is not set (set it, or write `${{{0}:-default}}` to give a default)"
    )]
    Unset(String),
    #[error("`${{` at character {0} is never closed with `}}`")]
    Unclosed(usize),
    #[error(
        "`${{{0}}}` is not a variable name (letters, digits and `_`, not starting with a digit)"
    )]
    BadName(String),
}

/// Expands every `${...}` in `value`, looking variables up with `lookup`.
pub fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    if !value.contains("${") {
        return Ok(value.to_owned());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let position = value.len() - after.len();
            let Some(close) = tail.find('}') else {
                return Err(ExpandError::Unclosed(value[..position].chars().count()));
            };
            let body = &tail[..close];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (body, None),
            };
            // Variable names follow the same rule as template placeholders.
            if !crate::pipeline::template::is_identifier(name) {
                return Err(ExpandError::BadName(body.to_owned()));
            }
            match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(ExpandError::Unset(name.to_owned())),
            }
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "URL" => Some("https://example".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        assert_eq!(expand("${URL}/x", &env).unwrap(), "https://example/x");
        assert_eq!(expand("${NOPE:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("${URL:-fallback}", &env).unwrap(), "https://example");
        assert_eq!(expand("${NOPE:-}", &env).unwrap(), "");
    }

    #[test]
    fn leaves_regex_anchors_and_escapes_alone() {
        assert_eq!(expand("error$", &env).unwrap(), "error$");
        assert_eq!(expand("a$b", &env).unwrap(), "a$b");
        assert_eq!(expand("$${URL}", &env).unwrap(), "${URL}");
        assert_eq!(
            expand("cost: 5$ ${URL}", &env).unwrap(),
            "cost: 5$ https://example"
        );
    }

    #[test]
    fn reports_what_is_wrong() {
        assert_eq!(
            expand("${NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        assert_eq!(expand("ab${URL", &env), Err(ExpandError::Unclosed(2)));
        assert_eq!(
            expand("${1X}", &env),
            Err(ExpandError::BadName("1X".into()))
        );
    }
}
