//! `qubes.VMExec`'s argument: an argv encoded into the service argument
//! (Qubes' encoding): bytes in `[A-Za-z0-9_.]` as themselves, `-` as `--`,
//! any other byte as `-XX` (two uppercase hex digits), arguments joined by
//! `+`. Exactly one encoding per argv, so a policy written against
//! `qubes.VMExec+ARG` means what it says.

/// Encodes argv.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> String {
    args.iter()
        .map(|a| {
            a.as_ref()
                .iter()
                .map(|&c| match c {
                    b'-' => "--".to_string(),
                    c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
                        (c as char).to_string()
                    }
                    c => format!("-{c:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// Decodes an argument back into argv; refuses anything [`encode`] would
/// not produce.
pub fn decode(arg: &str) -> Result<Vec<Vec<u8>>, String> {
    if arg.is_empty() {
        return Err("qubes.VMExec needs the command as its argument".into());
    }
    arg.split('+')
        .map(|part| {
            let b = part.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'-' if b.get(i + 1) == Some(&b'-') => {
                        out.push(b'-');
                        i += 2;
                    }
                    b'-' => {
                        let hex = part
                            .get(i + 1..i + 3)
                            .filter(|h| {
                                h.bytes()
                                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                            })
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .ok_or_else(|| format!("bad escape at byte {i} of {part:?}"))?;
                        // An escape for a byte that has a plain form is a
                        // second encoding: refused.
                        if hex.is_ascii_alphanumeric() || hex == b'_' || hex == b'.' || hex == b'-'
                        {
                            return Err(format!("needless escape at byte {i} of {part:?}"));
                        }
                        out.push(hex);
                        i += 3;
                    }
                    c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
                        out.push(c);
                        i += 1;
                    }
                    c => return Err(format!("character {:?} must be escaped", c as char)),
                }
            }
            Ok(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_awkward_arguments() {
        let args: [&[u8]; 5] = [b"sh", b"-c", b"echo a+b $HOME/x y", b"\xff\x00z", b""];
        let enc = encode(&args);
        assert!(enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-_.".contains(&b)));
        assert_eq!(decode(&enc).unwrap(), args.map(|a| a.to_vec()));
    }

    #[test]
    fn matches_qubes_examples() {
        assert_eq!(encode(&["ls", "-la", "/tmp"]), "ls+--la+-2Ftmp");
        assert_eq!(encode(&["echo", "a b"]), "echo+a-20b");
    }

    #[test]
    fn refuses_second_encodings_and_raw_specials() {
        for bad in [
            "", "a-", "a-G1", "a b", "a/b", "-", "a-2f", "a-+1", "a--1-", "-41", "-2D",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
