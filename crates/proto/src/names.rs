//! Validation of the names that appear on the wire: qubes, features, tags,
//! labels. The rules are Qubes' own so existing scripts keep working.

use thiserror::Error;

/// Longest qube name Qubes accepts.
pub const MAX_VM_NAME: usize = 31;
/// Longest feature, tag or label name we accept (Qubes sets no limit; a bound
/// keeps hostile input from growing the state file without end).
pub const MAX_TOKEN_NAME: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("VM name must be shorter than 32 characters")]
    VmTooLong,
    #[error("VM name must start with a letter and contain only letters, digits, '_', '.' and '-'")]
    VmIllegalChars,
    #[error("VM name cannot be 'none', 'default' or 'Domain-0'")]
    VmReserved,
    #[error("VM name cannot end with '-dm'")]
    VmEndsWithDm,
    #[error("name longer than {MAX_TOKEN_NAME} characters")]
    TooLong,
    #[error("name may contain only letters, digits, '_', '.' and '-'")]
    IllegalChars,
}

/// Checks a qube name as Qubes' `validate_name` does.
pub fn validate_vm_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_VM_NAME {
        return Err(NameError::VmTooLong);
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or(' ');
    if !first.is_ascii_alphabetic() || !chars.all(is_token_char) {
        return Err(NameError::VmIllegalChars);
    }
    if matches!(name, "none" | "default" | "Domain-0") {
        return Err(NameError::VmReserved);
    }
    if name.ends_with("-dm") {
        return Err(NameError::VmEndsWithDm);
    }
    Ok(())
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Checks a feature, tag or label name: `[a-zA-Z0-9_.-]+`, bounded length.
pub fn validate_token(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_TOKEN_NAME {
        return Err(NameError::TooLong);
    }
    if !name.chars().all(is_token_char) {
        return Err(NameError::IllegalChars);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn qubes_name_rules() {
        assert!(validate_vm_name("work").is_ok());
        assert!(validate_vm_name("sys-net").is_ok());
        assert!(validate_vm_name("a.b_c-1").is_ok());
        assert_eq!(validate_vm_name(""), Err(NameError::Empty));
        assert_eq!(validate_vm_name("1work"), Err(NameError::VmIllegalChars));
        assert_eq!(validate_vm_name("wo rk"), Err(NameError::VmIllegalChars));
        assert_eq!(validate_vm_name("none"), Err(NameError::VmReserved));
        assert_eq!(validate_vm_name("default"), Err(NameError::VmReserved));
        assert_eq!(validate_vm_name("Domain-0"), Err(NameError::VmReserved));
        assert_eq!(validate_vm_name("x-dm"), Err(NameError::VmEndsWithDm));
        assert!(validate_vm_name(&"a".repeat(31)).is_ok());
        assert_eq!(validate_vm_name(&"a".repeat(32)), Err(NameError::VmTooLong));
        assert_eq!(validate_vm_name("wörk"), Err(NameError::VmIllegalChars));
    }

    proptest! {
        #[test]
        fn accepted_vm_names_match_the_qubes_regex(s in "\\PC{0,40}") {
            if validate_vm_name(&s).is_ok() {
                prop_assert!(s.len() <= 31);
                prop_assert!(s.as_bytes()[0].is_ascii_alphabetic());
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
            }
        }

        #[test]
        fn generated_valid_names_are_accepted(s in "[a-zA-Z][a-zA-Z0-9_.]{0,27}[a-zA-Z0-9_.]") {
            prop_assume!(!matches!(s.as_str(), "none" | "default"));
            prop_assert!(validate_vm_name(&s).is_ok());
        }

        #[test]
        fn tokens_never_panic(s in "\\PC{0,300}") {
            let _ = validate_token(&s);
        }
    }
}
