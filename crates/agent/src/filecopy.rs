//! File copy between qubes (`qubes.Filecopy`), both ends inside qubes:
//!
//! - `qvm-copy FILE…` / `qvm-copy-to-vm TARGET FILE…` (and the `qvm-move`
//!   forms, which delete the sources once the receiver confirmed) pack the
//!   files into the Filecopy stream and send it as the call's stdin;
//! - the `qubes.Filecopy` service (this binary under that name) unpacks the
//!   stream, which comes from another qube and is hostile, into
//!   `~/QubesIncoming/<source>/` with `bulkhead-filecopy`'s checked
//!   unpacker, and answers with Qubes' result record (errno, CRC32).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bulkhead_proto::filecopy::Reply;
use bulkhead_proto::qrexec::{max_chunk, Message};
use bulkhead_proto::qrexec_io::send;

use crate::client::{collect, connect, Call};

/// Turns writes into DATA_STDIN messages of at most one chunk.
struct DataWriter<'a> {
    s: &'a mut std::os::unix::net::UnixStream,
    buf: Vec<u8>,
    chunk: usize,
}

impl Write for DataWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A whole chunk with nothing buffered goes out as it is.
        if self.buf.is_empty() && data.len() >= self.chunk {
            bulkhead_proto::qrexec_io::write_data(
                self.s,
                bulkhead_proto::qrexec::msg::DATA_STDIN,
                &data[..self.chunk],
            )?;
            return Ok(self.chunk);
        }
        let room = self.chunk - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            bulkhead_proto::qrexec_io::write_data(
                self.s,
                bulkhead_proto::qrexec::msg::DATA_STDIN,
                &self.buf,
            )?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// `qvm-copy`, `qvm-copy-to-vm`, `qvm-move`, `qvm-move-to-vm`.
pub fn sender(name: &str, args: Vec<String>) -> i32 {
    let moving = name.contains("move");
    let to_vm = name.ends_with("-to-vm");
    let mut args: Vec<String> = args.into_iter().filter(|a| a != "--").collect();
    if args.iter().any(|a| a == "-h" || a == "--help")
        || args.is_empty()
        || (to_vm && args.len() < 2)
    {
        eprintln!(
            "usage: {name} {}FILE [FILE...]",
            if to_vm { "TARGET " } else { "" }
        );
        return 2;
    }
    let target = if to_vm {
        args.remove(0)
    } else {
        "@default".into()
    };
    let files: Vec<PathBuf> = args.iter().map(PathBuf::from).collect();
    for f in &files {
        if std::fs::symlink_metadata(f).is_err() {
            eprintln!("{name}: {}: no such file or directory", f.display());
            return 1;
        }
    }
    match send_files(&target, &files) {
        Ok(0) => {
            if moving {
                for f in &files {
                    let gone = if f.is_dir() && !f.is_symlink() {
                        std::fs::remove_dir_all(f)
                    } else {
                        std::fs::remove_file(f)
                    };
                    if let Err(e) = gone {
                        eprintln!("{name}: copied, but cannot remove {}: {e}", f.display());
                        return 1;
                    }
                }
            }
            0
        }
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name}: {e}");
            1
        }
    }
}

fn send_files(target: &str, files: &[PathBuf]) -> io::Result<i32> {
    let Some(Call {
        stream: mut s,
        mut dec,
        version,
    }) = connect(target, "qubes.Filecopy")?
    else {
        return Ok(bulkhead_proto::qrexec::EXIT_REFUSED);
    };
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let crc = {
        let mut w = DataWriter {
            s: &mut s,
            buf: Vec::new(),
            chunk: max_chunk(version),
        };
        let crc = bulkhead_filecopy::pack(&paths, &mut w)?;
        w.flush()?;
        crc
    };
    send(&mut s, &Message::DataStdin(vec![]))?;
    // The receiver's result record is small; anything past 8 KiB is ignored.
    let got = collect(&mut s, &mut dec, 8192)?;
    let (reply, code) = (got.stdout, got.code);
    match Reply::parse(&reply) {
        Some(r) if r.error_code == 0 && r.crc32 == u64::from(crc) => Ok(0),
        Some(r) if r.error_code == 0 => Err(io::Error::other(
            "the receiver's checksum does not match what was sent; the copy is not complete",
        )),
        Some(r) => Err(io::Error::other(format!(
            "the receiver refused the copy: {}{}",
            io::Error::from_raw_os_error(r.error_code as i32),
            r.last_name
                .map(|n| format!(" (at {})", n.escape_debug()))
                .unwrap_or_default()
        ))),
        None if code == 0 => Err(io::Error::other("the receiver sent no result")),
        None => Ok(code),
    }
}

/// The `qubes.Filecopy` service: unpack stdin into ~/QubesIncoming/<source>.
pub fn receiver() -> i32 {
    let source = std::env::var("QREXEC_REMOTE_DOMAIN").unwrap_or_default();
    if bulkhead_proto::names::validate_vm_name(&source).is_err() {
        eprintln!("qubes.Filecopy: invalid source qube name");
        return 1;
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/home/user".into());
    let dest = Path::new(&home).join("QubesIncoming").join(&source);
    // Each level a real directory (created if missing), never a symlink.
    for d in [dest.parent().unwrap_or(&dest), dest.as_path()] {
        let _ = std::fs::create_dir(d);
        match std::fs::symlink_metadata(d) {
            Ok(m) if m.file_type().is_dir() => {}
            _ => {
                eprintln!(
                    "qubes.Filecopy: {} is not a directory; not copying",
                    d.display()
                );
                return 1;
            }
        }
    }
    let stdin = io::stdin().lock();
    let (reply, code) =
        match bulkhead_filecopy::unpack(stdin.take(u64::MAX), &dest, Default::default()) {
            Ok(st) => (
                Reply {
                    error_code: 0,
                    crc32: u64::from(st.crc32),
                    last_name: None,
                },
                0,
            ),
            Err(e) => {
                eprintln!("qubes.Filecopy: {e}");
                (
                    Reply {
                        error_code: e.errno as u32,
                        crc32: u64::from(e.crc32),
                        last_name: e.last_name.clone(),
                    },
                    1,
                )
            }
        };
    let mut out = io::stdout().lock();
    let _ = out.write_all(&reply.encode());
    let _ = out.flush();
    code
}
