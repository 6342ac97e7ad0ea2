//! Source/target tokens and where each may appear.

use bulkhead_proto::names::validate_vm_name;

/// A SOURCE/TARGET column value or a `target=` parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Token {
    /// `*`: anything, dom0 included.
    Any,
    /// `@anyvm`: any qube except dom0.
    AnyVm,
    /// `@adminvm` (also literal `dom0`).
    AdminVm,
    /// `@default`: the caller named no target.
    Default,
    /// `@dispvm`: a new disposable from the source's default_dispvm.
    DispVm,
    /// `@dispvm:NAME`.
    DispVmOf(String),
    /// `@dispvm:@tag:T`.
    DispVmTag(String),
    /// `@tag:T`.
    Tag(String),
    /// `@type:CLASS`.
    Type(String),
    /// A qube by name.
    Name(String),
    /// `uuid:<uuid>`.
    Uuid(String),
}

/// Which column a token is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Source,
    Target,
    /// `target=` / `default_target=`.
    Param,
}

const CLASSES: [&str; 5] = ["AdminVM", "AppVM", "DispVM", "StandaloneVM", "TemplateVM"];

fn tag_ok(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Token {
    /// Parses a token for a column; the error says what is wrong.
    pub fn parse(s: &str, col: Column) -> Result<Token, String> {
        let t = match s {
            "*" => Token::Any,
            "@anyvm" => Token::AnyVm,
            "@adminvm" | "dom0" => Token::AdminVm,
            "@default" => Token::Default,
            "@dispvm" => Token::DispVm,
            _ => {
                if let Some(rest) = s.strip_prefix("@dispvm:@tag:") {
                    if !tag_ok(rest) {
                        return Err(format!("invalid tag in {s:?}"));
                    }
                    Token::DispVmTag(rest.to_string())
                } else if let Some(rest) = s.strip_prefix("@dispvm:") {
                    validate_vm_name(rest)
                        .map_err(|e| format!("invalid qube name in {s:?}: {e}"))?;
                    Token::DispVmOf(rest.to_string())
                } else if let Some(rest) = s.strip_prefix("@tag:") {
                    if !tag_ok(rest) {
                        return Err(format!("invalid tag in {s:?}"));
                    }
                    Token::Tag(rest.to_string())
                } else if let Some(rest) = s.strip_prefix("@type:") {
                    if !CLASSES.contains(&rest) {
                        return Err(format!(
                            "unknown class in {s:?} (expected one of {})",
                            CLASSES.join(", ")
                        ));
                    }
                    Token::Type(rest.to_string())
                } else if let Some(rest) = s.strip_prefix("uuid:") {
                    let ok = rest.len() == 36
                        && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
                    if !ok {
                        return Err(format!("invalid uuid in {s:?}"));
                    }
                    if rest == "00000000-0000-0000-0000-000000000000" {
                        Token::AdminVm
                    } else {
                        Token::Uuid(rest.to_ascii_lowercase())
                    }
                } else if s.starts_with('@') {
                    return Err(format!("unknown token {s:?}"));
                } else {
                    validate_vm_name(s).map_err(|e| format!("invalid qube name {s:?}: {e}"))?;
                    Token::Name(s.to_string())
                }
            }
        };
        let allowed = match col {
            Column::Source => !matches!(t, Token::Default | Token::DispVm),
            Column::Target => true,
            Column::Param => matches!(
                t,
                Token::Name(_)
                    | Token::Uuid(_)
                    | Token::AdminVm
                    | Token::DispVm
                    | Token::DispVmOf(_)
            ),
        };
        if !allowed {
            let col = match col {
                Column::Source => "the source column",
                Column::Target => "the target column",
                Column::Param => "target=/default_target=",
            };
            return Err(format!("{s:?} is not allowed in {col}"));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_accept_what_qubes_accepts() {
        assert_eq!(Token::parse("dom0", Column::Source), Ok(Token::AdminVm));
        assert_eq!(
            Token::parse("uuid:00000000-0000-0000-0000-000000000000", Column::Target),
            Ok(Token::AdminVm)
        );
        assert!(Token::parse("@default", Column::Source).is_err());
        assert!(Token::parse("@dispvm", Column::Source).is_err());
        assert!(Token::parse("@anyvm", Column::Param).is_err());
        assert!(Token::parse("@tag:x", Column::Param).is_err());
        assert_eq!(
            Token::parse("@dispvm:work-dvm", Column::Param),
            Ok(Token::DispVmOf("work-dvm".into()))
        );
        assert_eq!(
            Token::parse("@dispvm:@tag:x", Column::Source),
            Ok(Token::DispVmTag("x".into()))
        );
        assert!(Token::parse("@type:Xen", Column::Target).is_err());
        assert!(Token::parse("@whatever", Column::Target).is_err());
        assert!(Token::parse("1bad", Column::Target).is_err());
    }
}
