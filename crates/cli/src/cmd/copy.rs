//! `bulkhead copy QUBE FILE...`: copies files and directory trees from the
//! host (dom0) into a qube's `~/QubesIncoming/dom0/`, through the qube's
//! own `qubes.Filecopy` service (the same hardened unpacker as qvm-copy
//! between qubes). Starts the qube if needed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bulkhead_proto::filecopy::Reply;

use crate::client::Client;
use crate::exit::Code;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The qube to copy into.
    vm: String,
    /// Files and directories to copy.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(client: &Client, socket: &Path, a: Args) -> Result<Code> {
    for f in &a.files {
        std::fs::symlink_metadata(f).with_context(|| format!("{}", f.display()))?;
    }
    super::lookup(client, &a.vm)?;
    let state = client.call("admin.vm.CurrentState", "", &a.vm, b"")?;
    if state.contains("power_state=Halted") {
        client.call("admin.vm.Start", "", &a.vm, b"")?;
    }
    let target = super::agent_socket(socket, &a.vm)?;
    let (reader, mut writer) = std::io::pipe().context("pipe")?;
    let files = a.files.clone();
    let packer = std::thread::spawn(move || -> std::io::Result<u32> {
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let crc = bulkhead_filecopy::pack(&paths, &mut writer)?;
        drop(writer);
        Ok(crc)
    });
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = bulkhead_hal::guest::exec(
        &target,
        "user",
        "QUBESRPC qubes.Filecopy dom0",
        reader,
        &mut out,
        &mut err,
    )
    .with_context(|| format!("copying into '{}'", a.vm))?;
    let crc = packer
        .join()
        .map_err(|_| anyhow::anyhow!("the packer failed"))?
        .context("reading the files to copy")?;
    eprint!("{}", String::from_utf8_lossy(&err));
    match Reply::parse(&out) {
        Some(r) if r.error_code == 0 && r.crc32 == u64::from(crc) => {
            println!("copied into {}:~/QubesIncoming/dom0/", a.vm);
            Ok(Code::Ok)
        }
        Some(r) if r.error_code == 0 => {
            bail!("checksum mismatch: the copy in '{}' is not complete", a.vm)
        }
        Some(r) => bail!(
            "'{}' refused the copy: {}{}",
            a.vm,
            std::io::Error::from_raw_os_error(r.error_code as i32),
            r.last_name
                .map(|n| format!(" (at {})", n.escape_debug()))
                .unwrap_or_default()
        ),
        None => bail!("'{}' sent no result (exit code {code})", a.vm),
    }
}
