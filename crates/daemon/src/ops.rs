//! Admin API calls served by the host side rather than by the state alone:
//! the lifecycle (see [`crate::lifecycle`]), volumes and pools, and removing
//! a qube's files with it. Replies use Qubes' formats.

use std::sync::Arc;

use crate::api::{Call, Ctx};
use crate::error::{ApiError, ApiResult, Exc};
use crate::model::{PowerState, VolumeSettings, DOM0};
use crate::server::Daemon;
use crate::storage::{self, Storage};

fn storage_err(e: storage::StorageError) -> ApiError {
    ApiError::new(Exc::StoragePoolException, e.to_string())
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

impl Daemon {
    /// Serves a call for which [`Call::is_host_op`] holds.
    pub async fn host_op(self: &Arc<Self>, ctx: &Ctx, call: &Call) -> ApiResult<String> {
        let name = ctx.dest.as_str();
        match call {
            Call::Start => self.vm_start(name).await.map(|()| String::new()),
            Call::CreateDisposable => {
                let template = if name == DOM0 {
                    let app = self.snapshot();
                    crate::model::props::value(
                        &app,
                        crate::model::props::Holder::Global,
                        "default_dispvm",
                    )?
                    .as_vm()
                    .map(str::to_string)
                    .ok_or_else(|| {
                        ApiError::value("no default_dispvm is set; name a disposable template")
                    })?
                } else {
                    name.to_string()
                };
                self.create_disposable(&template).await
            }
            Call::Shutdown { force, wait } => self
                .vm_shutdown(name, *force, *wait)
                .await
                .map(|()| String::new()),
            Call::Kill => self.vm_kill(name).await.map(|()| String::new()),
            Call::Pause => self.vm_pause(name, true).await.map(|()| String::new()),
            Call::Unpause => self.vm_pause(name, false).await.map(|()| String::new()),
            Call::CurrentState => {
                let app = self.snapshot();
                let mut s = crate::api::current_state(&app, app.vm(name)?);
                // Not in Qubes' reply: which accelerator a VM runs on (ahead
                // of power_state, which stays last as in Qubes).
                if let Some(a) = self.runtime().and_then(|rt| rt.accelerator(name)) {
                    s = s.replacen(
                        " power_state=",
                        &format!(" accelerator={a} power_state="),
                        1,
                    );
                }
                Ok(s)
            }
            Call::PoolList => Ok("default\nlinux-kernel\n".into()),
            Call::PoolListDrivers => Ok(storage::DRIVERS
                .iter()
                .map(|(d, params)| format!("{d} {}\n", params.join(" ")))
                .collect()),
            Call::PoolInfo(pool) => self.pool_info(pool),
            Call::VolumeList => {
                let app = self.snapshot();
                let q = app.vm(name)?;
                Ok(storage::volumes(&app, q)
                    .iter()
                    .map(|c| format!("{}\n", c.name))
                    .collect())
            }
            Call::VolumeInfo(vol) => self.volume_info(name, vol),
            Call::VolumeListSnapshots(vol) => {
                let rt = self.runtime_or_err()?;
                let app = self.snapshot();
                let q = app.vm(name)?;
                volume_exists(&app, q, vol)?;
                Ok(rt
                    .storage
                    .revisions(q, vol)
                    .iter()
                    .map(|n| format!("{n}\n"))
                    .collect())
            }
            Call::VolumeRevert(vol, rev) => {
                let (vol, rev) = (vol.clone(), *rev);
                self.with_halted(name, move |rt, app, q| {
                    rt.storage.revert(app, q, &vol, rev).map_err(storage_err)
                })
                .await
                .map(|()| String::new())
            }
            Call::VolumeResize(vol, size) => {
                let (vol2, size) = (vol.clone(), *size);
                self.with_halted(name, move |rt, app, q| {
                    rt.storage.resize(app, q, &vol2, size).map_err(storage_err)
                })
                .await?;
                self.update_volume(ctx, vol, |s| s.size = Some(size)).await
            }
            Call::VolumeSetRevisions(vol, n) => {
                self.update_volume(ctx, vol, |s| s.revisions_to_keep = Some(*n))
                    .await
            }
            Call::VolumeCloneFrom(vol) => {
                let rt = self.runtime_or_err()?;
                let app = self.snapshot();
                let q = app.vm(name)?;
                let c = volume_exists(&app, q, vol)?;
                if !c.save_on_stop || c.snap_on_start {
                    return Err(ApiError::value(format!(
                        "volume {name}:{vol} is not kept across restarts, so it cannot be cloned"
                    )));
                }
                let token = format!("{:032x}", rand::random::<u128>());
                let mut tokens = rt.clone_tokens.lock().unwrap_or_else(|e| e.into_inner());
                // Unused tokens expire after a minute.
                tokens.retain(|_, (_, _, at)| at.elapsed() < std::time::Duration::from_secs(60));
                tokens.insert(
                    token.clone(),
                    (name.to_string(), vol.clone(), std::time::Instant::now()),
                );
                Ok(token)
            }
            Call::VolumeCloneTo(vol, token) => {
                let rt = self.runtime_or_err()?;
                let (src, src_vol, _) = rt
                    .clone_tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(token)
                    .ok_or_else(|| ApiError::value("invalid or already used clone token"))?;
                if &src_vol != vol {
                    return Err(ApiError::value(format!(
                        "the token is for volume '{src_vol}', not '{vol}'"
                    )));
                }
                let vol = vol.clone();
                self.with_halted(name, move |rt, app, q| {
                    let s = app.vm(&src)?;
                    rt.storage
                        .clone_volume(app, s, q, &vol)
                        .map_err(storage_err)
                })
                .await
                .map(|()| String::new())
            }
            Call::VolumeImportBegin(vol) => {
                let vol = vol.clone();
                self.with_halted(name, move |rt, app, q| {
                    let c = volume_exists(app, q, &vol)?;
                    if !c.save_on_stop || c.snap_on_start {
                        return Err(ApiError::value(format!(
                            "volume {}:{vol} is not kept across restarts; nothing can be imported into it",
                            q.name
                        )));
                    }
                    let p = rt.storage.import_begin(q, &vol).map_err(storage_err)?;
                    Ok(format!("{} {}", c.size, p.display()))
                })
                .await
            }
            Call::VolumeImportEnd(vol, ok) => {
                let (vol, ok) = (vol.clone(), *ok);
                self.with_halted(name, move |rt, app, q| {
                    rt.storage.import_end(app, q, &vol, ok).map_err(storage_err)
                })
                .await
                .map(|()| String::new())
            }
            other => Err(ApiError::protocol(format!(
                "internal: {other:?} is not a host operation"
            ))),
        }
    }

    fn runtime_or_err(&self) -> ApiResult<Arc<crate::lifecycle::Runtime>> {
        self.runtime().cloned().ok_or_else(|| {
            ApiError::new(
                Exc::QubesException,
                "this bulkheadd runs without storage (state-only mode)",
            )
        })
    }

    async fn update_volume(
        self: &Arc<Self>,
        ctx: &Ctx,
        vol: &str,
        f: impl FnOnce(&mut VolumeSettings),
    ) -> ApiResult<String> {
        let app = self.snapshot();
        let q = app.vm(&ctx.dest)?;
        volume_exists(&app, q, vol)?;
        let mut s = q.volumes.get(vol).cloned().unwrap_or_default();
        f(&mut s);
        self.write_call(ctx, &Call::SetVolume(vol.to_string(), s))
            .await
            .map(|_| String::new())
    }

    fn pool_info(&self, pool: &str) -> ApiResult<String> {
        let rt = self.runtime_or_err()?;
        let (driver, dir) = match pool {
            "default" => ("file-reflink", rt.storage.pool_path().to_path_buf()),
            "linux-kernel" => (
                "linux-kernel",
                rt.storage
                    .pool_path()
                    .parent()
                    .map(|p| p.join("linux-kernel"))
                    .unwrap_or_default(),
            ),
            other => {
                return Err(ApiError::value(format!(
                    "No such pool: '{other}' (pools: default, linux-kernel)"
                )))
            }
        };
        let (size, usage) = nix::sys::statvfs::statvfs(rt.storage.pool_path())
            .map(|s| {
                let f = s.fragment_size();
                (s.blocks() * f, (s.blocks() - s.blocks_free()) * f)
            })
            .unwrap_or((0, 0));
        let mut lines = vec![
            format!("dir_path={}", dir.display()),
            format!("driver={driver}"),
            format!("name={pool}"),
            format!("size={size}"),
            format!("usage={usage}"),
        ];
        if pool == "default" {
            lines.push(format!("revisions_to_keep={}", storage::DEFAULT_REVISIONS));
            lines.push(format!("reflink={}", py_bool(rt.storage.reflink())));
        }
        lines.sort();
        Ok(lines.iter().map(|l| format!("{l}\n")).collect())
    }

    fn volume_info(&self, name: &str, vol: &str) -> ApiResult<String> {
        let rt = self.runtime_or_err()?;
        let app = self.snapshot();
        let q = app.vm(name)?;
        let c = volume_exists(&app, q, vol)?;
        let source = c
            .source
            .as_ref()
            .and_then(|(sq, sv)| {
                app.qubes
                    .get(sq)
                    .map(|s| format!("{}/{sv}", Storage::vid_dir(s)))
            })
            .unwrap_or_default();
        let mut out = vec![
            ("pool", c.pool.clone()),
            ("vid", format!("{}/{vol}", Storage::vid_dir(q))),
            ("size", c.size.to_string()),
            ("usage", rt.storage.usage(q, vol).to_string()),
            ("rw", py_bool(c.rw).into()),
            ("source", source),
            ("path", rt.storage.clean(q, vol).display().to_string()),
            ("save_on_stop", py_bool(c.save_on_stop).into()),
            ("snap_on_start", py_bool(c.snap_on_start).into()),
            ("revisions_to_keep", c.revisions_to_keep.to_string()),
            ("ephemeral", "False".into()),
        ];
        if c.snap_on_start {
            let outdated = q.power != PowerState::Halted && rt.storage.is_outdated(&app, q, vol);
            out.push(("is_outdated", py_bool(outdated).into()));
        }
        Ok(out.iter().map(|(k, v)| format!("{k}={v}\n")).collect())
    }

    /// `admin.vm.Remove`: the definition goes (the write checks it is
    /// halted and unreferenced), then its volumes.
    pub async fn remove_qube(self: &Arc<Self>, ctx: &Ctx) -> ApiResult<String> {
        let Some(rt) = self.runtime().cloned() else {
            return self.write_call(ctx, &Call::Remove).await;
        };
        let slot = rt.slot(&ctx.dest);
        let _g = slot.lock().await;
        let q = self.snapshot().vm(&ctx.dest)?.clone();
        let body = self.write_call(ctx, &Call::Remove).await?;
        if q.name != DOM0 {
            let r = tokio::task::spawn_blocking(move || rt.storage.remove(&q)).await;
            if let Ok(Err(e)) = r {
                tracing::error!(
                    "qube '{}' removed, but deleting its volumes failed: {e}",
                    ctx.dest
                );
            }
        }
        Ok(body)
    }
}

fn volume_exists(
    app: &crate::model::App,
    q: &crate::model::Qube,
    vol: &str,
) -> ApiResult<storage::VolumeConf> {
    storage::volumes(app, q)
        .into_iter()
        .find(|c| c.name == vol)
        .ok_or_else(|| ApiError::value(format!("qube '{}' has no volume '{vol}'", q.name)))
}
