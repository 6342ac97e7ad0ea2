//! The one command model: every Admin API call becomes a typed [`Call`],
//! checked against the method table (argument, payload and destination rules
//! as qubesd's), then executed by `exec` against the state. Front ends (the
//! socket server today, qrexec later) only translate into `Call`.

mod exec;
pub(crate) use exec::current_state;

use std::collections::BTreeMap;

use bulkhead_proto::admin::Request;
use bulkhead_proto::names::{validate_token, validate_vm_name};

use crate::error::{ApiError, ApiResult};
use crate::model::{App, Class, DOM0, KNOWN_POOLS, VOLUME_NAMES};

pub use exec::{mutate, query, EventFilter};

/// Whose properties a property call is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Global,
    Vm,
}

/// Which chain `feature.CheckWith*` walks after the qube itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    Template,
    Netvm,
    AdminVm,
    TemplateAndAdminVm,
}

/// One Admin API operation, fully decoded. Arguments are validated names;
/// payloads that need state to validate stay raw until execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    VmClassList,
    VmList,
    PropertyList(Target),
    PropertyGet(Target, String),
    PropertyGetAll(Target),
    PropertyGetDefault(Target, String),
    PropertyHelp(Target, String),
    PropertySet(Target, String, Vec<u8>),
    PropertyReset(Target, String),
    FeatureList,
    FeatureGet(String),
    FeatureSet(String, String),
    FeatureRemove(String),
    FeatureCheck(Chain, String),
    TagList,
    TagGet(String),
    TagSet(String),
    TagRemove(String),
    LabelList,
    LabelGet(String),
    LabelIndex(String),
    LabelCreate(String, String),
    LabelRemove(String),
    Create(CreateArgs),
    Remove,
    CurrentState,
    NotesGet,
    NotesSet(String),
    Events,
    /// `internal.GetSystemInfo`: what the policy evaluator knows, as JSON.
    SystemInfo,
    // Lifecycle (served by `lifecycle`, not by `exec`).
    Start,
    /// `admin.vm.CreateDisposable`: a new disposable from the destination
    /// (or, for dom0, the global `default_dispvm`); returns its name.
    CreateDisposable,
    Shutdown {
        force: bool,
        wait: bool,
    },
    Kill,
    Pause,
    Unpause,
    // Storage (served by `ops`).
    VolumeList,
    VolumeInfo(String),
    VolumeListSnapshots(String),
    VolumeRevert(String, u64),
    VolumeResize(String, u64),
    VolumeSetRevisions(String, i64),
    VolumeCloneFrom(String),
    VolumeCloneTo(String, String),
    VolumeImportBegin(String),
    VolumeImportEnd(String, bool),
    PoolList,
    PoolListDrivers,
    PoolInfo(String),
    /// Internal: the runtime's power state of the destination (never decoded
    /// from a request; not persisted).
    SetPower(crate::model::PowerState),
    /// Internal: record a volume's new settings after the files changed.
    SetVolume(String, crate::model::VolumeSettings),
}

/// `admin.vm.Create.<Class>` / `CreateInPool.<Class>` decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateArgs {
    pub class: Class,
    pub template: Option<String>,
    pub name: String,
    pub label: String,
    /// Volume name → pool; `"*"` means every volume.
    pub pools: BTreeMap<String, String>,
}

impl Call {
    /// Whether executing this call changes state (and so must be persisted).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Call::PropertySet(..)
                | Call::PropertyReset(..)
                | Call::FeatureSet(..)
                | Call::FeatureRemove(..)
                | Call::TagSet(..)
                | Call::TagRemove(..)
                | Call::LabelCreate(..)
                | Call::LabelRemove(..)
                | Call::Create(..)
                | Call::Remove
                | Call::NotesSet(..)
                | Call::SetPower(..)
                | Call::SetVolume(..)
        )
    }

    /// Whether a write must reach the state file (power states are runtime-only).
    pub fn persists(&self) -> bool {
        self.is_write() && !matches!(self, Call::SetPower(..))
    }

    /// Whether this call is served by the host side (lifecycle and storage)
    /// rather than by the state alone.
    pub fn is_host_op(&self) -> bool {
        matches!(
            self,
            Call::Start
                | Call::CurrentState
                | Call::CreateDisposable
                | Call::Shutdown { .. }
                | Call::Kill
                | Call::Pause
                | Call::Unpause
                | Call::VolumeList
                | Call::VolumeInfo(..)
                | Call::VolumeListSnapshots(..)
                | Call::VolumeRevert(..)
                | Call::VolumeResize(..)
                | Call::VolumeSetRevisions(..)
                | Call::VolumeCloneFrom(..)
                | Call::VolumeCloneTo(..)
                | Call::VolumeImportBegin(..)
                | Call::VolumeImportEnd(..)
                | Call::PoolList
                | Call::PoolListDrivers
                | Call::PoolInfo(..)
        )
    }
}

/// Who called and about which qube (names already resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    pub source: String,
    pub dest: String,
}

/// Requirement for an argument, payload or destination, as qubesd's `@method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Yes,
    No,
    Any,
}

use Want::{Any, No, Yes};

/// (method, wants_arg, wants_payload, dest must be dom0)
static METHODS: &[(&str, Want, Want, Want)] = &[
    ("admin.Events", No, No, Any),
    ("admin.label.Create", Yes, Yes, Yes),
    ("admin.label.Get", Yes, No, Yes),
    ("admin.label.Index", Yes, No, Yes),
    ("admin.label.List", No, No, Yes),
    ("admin.label.Remove", Yes, No, Yes),
    ("admin.property.Get", Yes, No, Yes),
    ("admin.property.GetAll", No, No, Yes),
    ("admin.property.GetDefault", Yes, No, Yes),
    ("admin.property.Help", Yes, No, Yes),
    ("admin.property.List", No, No, Yes),
    ("admin.property.Reset", Yes, No, Yes),
    ("admin.property.Set", Yes, Any, Yes),
    ("admin.pool.Info", Yes, No, Yes),
    ("admin.pool.List", No, No, Yes),
    ("admin.pool.ListDrivers", No, No, Yes),
    ("admin.vm.CreateDisposable", No, No, Any),
    ("admin.vm.CurrentState", No, No, Any),
    ("admin.vm.Kill", No, No, No),
    ("admin.vm.Pause", No, No, No),
    ("admin.vm.Shutdown", Any, No, No),
    ("admin.vm.Start", No, No, No),
    ("admin.vm.Unpause", No, No, No),
    ("admin.vm.volume.CloneFrom", Yes, No, No),
    ("admin.vm.volume.CloneTo", Yes, Yes, No),
    ("admin.vm.volume.Info", Yes, No, No),
    ("admin.vm.volume.List", No, No, No),
    ("admin.vm.volume.ListSnapshots", Yes, No, No),
    ("admin.vm.volume.Resize", Yes, Yes, No),
    ("admin.vm.volume.Revert", Yes, Yes, No),
    ("admin.vm.volume.Set.revisions_to_keep", Yes, Yes, No),
    ("internal.GetSystemInfo", No, No, Yes),
    ("internal.vm.volume.ImportBegin", Yes, No, No),
    ("internal.vm.volume.ImportEnd", Yes, Yes, No),
    ("admin.vm.List", No, No, Any),
    ("admin.vm.Remove", No, No, No),
    ("admin.vm.feature.CheckWithAdminVM", Yes, No, Any),
    ("admin.vm.feature.CheckWithNetvm", Yes, No, Any),
    ("admin.vm.feature.CheckWithTemplate", Yes, No, Any),
    ("admin.vm.feature.CheckWithTemplateAndAdminVM", Yes, No, Any),
    ("admin.vm.feature.Get", Yes, No, Any),
    ("admin.vm.feature.List", No, No, Any),
    ("admin.vm.feature.Remove", Yes, No, Any),
    ("admin.vm.feature.Set", Yes, Any, Any),
    ("admin.vm.notes.Get", No, No, Any),
    ("admin.vm.notes.Set", No, Any, Any),
    ("admin.vm.property.Get", Yes, No, Any),
    ("admin.vm.property.GetAll", No, No, Any),
    ("admin.vm.property.GetDefault", Yes, No, Any),
    ("admin.vm.property.Help", Yes, No, Any),
    ("admin.vm.property.List", No, No, Any),
    ("admin.vm.property.Reset", Yes, No, Any),
    ("admin.vm.property.Set", Yes, Any, Any),
    ("admin.vm.tag.Get", Yes, No, Any),
    ("admin.vm.tag.List", No, No, Any),
    ("admin.vm.tag.Remove", Yes, No, Any),
    ("admin.vm.tag.Set", Yes, No, Any),
    ("admin.vmclass.List", No, No, Yes),
];

/// Every method name this daemon answers, for docs and tests.
pub fn method_names() -> Vec<String> {
    let mut v: Vec<String> = METHODS.iter().map(|m| m.0.to_string()).collect();
    for c in Class::ALL.iter().filter(|c| **c != Class::AdminVM) {
        v.push(format!("admin.vm.Create.{}", c.name()));
        v.push(format!("admin.vm.CreateInPool.{}", c.name()));
    }
    v.sort();
    v
}

/// Largest notes text (Qubes' limit).
pub const MAX_NOTES: usize = 256_000;
/// Largest feature value.
pub const MAX_FEATURE_VALUE: usize = 4096;

fn arg_name(kind: &str, arg: &str) -> ApiResult<String> {
    validate_token(arg)
        .map_err(|e| ApiError::protocol(format!("invalid {kind} name '{arg}': {e}")))?;
    Ok(arg.to_string())
}

fn ascii(payload: &[u8], what: &str) -> ApiResult<String> {
    if !payload.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ApiError::protocol(format!(
            "{what} must be printable ASCII"
        )));
    }
    Ok(String::from_utf8_lossy(payload).into_owned())
}

/// Decodes a framed request into a typed call, enforcing qubesd's rules.
pub fn decode(app: &App, req: &Request) -> ApiResult<(Ctx, Call)> {
    // Same order as qubesd: source, destination, then the method.
    let source = app.resolve_vm(&req.source)?.name.clone();
    let dest_q = app.resolve_vm(&req.dest)?;
    let dest = dest_q.name.clone();
    let dest_is_admin = dest_q.class == Class::AdminVM;
    let method = req.method.as_str();

    let (create_class, in_pool) = if let Some(c) = method.strip_prefix("admin.vm.Create.") {
        (Some(c), false)
    } else if let Some(c) = method.strip_prefix("admin.vm.CreateInPool.") {
        (Some(c), true)
    } else {
        (None, false)
    };
    let (want_arg, want_payload, want_admin) = match create_class {
        Some(c) => match Class::parse(c) {
            Some(cl) if cl != Class::AdminVM => (Any, Yes, Yes),
            _ => return Err(ApiError::protocol(format!("no such method: '{method}'"))),
        },
        None => match METHODS.iter().find(|m| m.0 == method) {
            Some(m) => (m.1, m.2, m.3),
            None => return Err(ApiError::protocol(format!("no such method: '{method}'"))),
        },
    };
    match (want_payload, req.payload.is_empty()) {
        (Yes, true) => return Err(ApiError::protocol("expected payload")),
        (No, false) => return Err(ApiError::protocol("unexpected payload")),
        _ => {}
    }
    match (want_arg, req.arg.is_empty()) {
        (Yes, true) => return Err(ApiError::protocol("expected an argument")),
        (No, false) => return Err(ApiError::protocol("unexpected argument")),
        _ => {}
    }
    match (want_admin, dest_is_admin) {
        (Yes, false) => return Err(ApiError::protocol("expected destination to be AdminVM")),
        (No, true) => return Err(ApiError::protocol("expected destination to not be AdminVM")),
        _ => {}
    }

    let arg = req.arg.as_str();
    let payload = &req.payload;
    let tgt = if method.starts_with("admin.property.") {
        Target::Global
    } else {
        Target::Vm
    };
    let call = match method {
        "admin.Events" => Call::Events,
        "admin.vmclass.List" => Call::VmClassList,
        "admin.vm.List" => Call::VmList,
        "admin.vm.CurrentState" => Call::CurrentState,
        "admin.vm.Start" => Call::Start,
        "admin.vm.CreateDisposable" => Call::CreateDisposable,
        "internal.GetSystemInfo" => {
            if source != DOM0 {
                return Err(ApiError::new(
                    crate::error::Exc::PermissionDenied,
                    "only dom0 may read the system info",
                ));
            }
            Call::SystemInfo
        }
        "admin.vm.Kill" => Call::Kill,
        "admin.vm.Pause" => Call::Pause,
        "admin.vm.Unpause" => Call::Unpause,
        "admin.vm.Shutdown" => {
            let mut force = false;
            let mut wait = false;
            for part in arg.split('+').filter(|p| !p.is_empty()) {
                match part {
                    "force" if !force => force = true,
                    "wait" if !wait => wait = true,
                    _ => {
                        return Err(ApiError::protocol(format!(
                            "invalid shutdown option '{part}'"
                        )))
                    }
                }
            }
            Call::Shutdown { force, wait }
        }
        "admin.pool.List" => Call::PoolList,
        "admin.pool.ListDrivers" => Call::PoolListDrivers,
        "admin.pool.Info" => Call::PoolInfo(arg_name("pool", arg)?),
        "admin.vm.volume.List" => Call::VolumeList,
        "admin.vm.volume.Info" => Call::VolumeInfo(volume_arg(arg)?),
        "admin.vm.volume.ListSnapshots" => Call::VolumeListSnapshots(volume_arg(arg)?),
        "admin.vm.volume.CloneFrom" => Call::VolumeCloneFrom(volume_arg(arg)?),
        "admin.vm.volume.CloneTo" => {
            Call::VolumeCloneTo(volume_arg(arg)?, ascii(payload, "clone token")?)
        }
        "admin.vm.volume.Revert" => {
            let rev = ascii(payload, "revision")?;
            let n = rev.trim().parse().map_err(|_| {
                ApiError::value(format!(
                    "invalid revision '{rev}': expected a number from ListSnapshots"
                ))
            })?;
            Call::VolumeRevert(volume_arg(arg)?, n)
        }
        "admin.vm.volume.Resize" => {
            let size = ascii(payload, "size")?;
            let n = size
                .trim()
                .parse()
                .map_err(|_| ApiError::value(format!("invalid size '{size}': expected bytes")))?;
            Call::VolumeResize(volume_arg(arg)?, n)
        }
        "admin.vm.volume.Set.revisions_to_keep" => {
            let v = ascii(payload, "revisions_to_keep")?;
            let n: i64 = v.trim().parse().map_err(|_| {
                ApiError::value(format!(
                    "invalid revisions_to_keep '{v}': expected an integer >= -1"
                ))
            })?;
            if !(-1..=100).contains(&n) {
                return Err(ApiError::value(format!(
                    "invalid revisions_to_keep {n}: expected -1 to 100"
                )));
            }
            Call::VolumeSetRevisions(volume_arg(arg)?, n)
        }
        "internal.vm.volume.ImportBegin" => {
            if source != DOM0 {
                return Err(ApiError::new(
                    crate::error::Exc::PermissionDenied,
                    "only dom0 may import volumes",
                ));
            }
            Call::VolumeImportBegin(volume_arg(arg)?)
        }
        "internal.vm.volume.ImportEnd" => {
            if source != DOM0 {
                return Err(ApiError::new(
                    crate::error::Exc::PermissionDenied,
                    "only dom0 may import volumes",
                ));
            }
            let ok = match payload.as_slice() {
                b"ok" => true,
                b"fail" => false,
                _ => return Err(ApiError::protocol("expected payload 'ok' or 'fail'")),
            };
            Call::VolumeImportEnd(volume_arg(arg)?, ok)
        }
        "admin.vm.Remove" => Call::Remove,
        "admin.vm.notes.Get" => Call::NotesGet,
        "admin.vm.notes.Set" => {
            if payload.len() > MAX_NOTES {
                return Err(ApiError::value(format!(
                    "notes longer than {MAX_NOTES} bytes"
                )));
            }
            Call::NotesSet(sanitize_notes(payload))
        }
        "admin.property.List" | "admin.vm.property.List" => Call::PropertyList(tgt),
        "admin.property.GetAll" | "admin.vm.property.GetAll" => Call::PropertyGetAll(tgt),
        "admin.property.Get" | "admin.vm.property.Get" => Call::PropertyGet(tgt, prop_arg(arg)?),
        "admin.property.GetDefault" | "admin.vm.property.GetDefault" => {
            Call::PropertyGetDefault(tgt, prop_arg(arg)?)
        }
        "admin.property.Help" | "admin.vm.property.Help" => Call::PropertyHelp(tgt, prop_arg(arg)?),
        "admin.property.Set" | "admin.vm.property.Set" => {
            Call::PropertySet(tgt, prop_arg(arg)?, payload.clone())
        }
        "admin.property.Reset" | "admin.vm.property.Reset" => {
            Call::PropertyReset(tgt, prop_arg(arg)?)
        }
        "admin.vm.feature.List" => Call::FeatureList,
        "admin.vm.feature.Get" => Call::FeatureGet(arg_name("feature", arg)?),
        "admin.vm.feature.Remove" => Call::FeatureRemove(arg_name("feature", arg)?),
        "admin.vm.feature.Set" => {
            if payload.len() > MAX_FEATURE_VALUE {
                return Err(ApiError::value(format!(
                    "feature value longer than {MAX_FEATURE_VALUE} bytes"
                )));
            }
            Call::FeatureSet(arg_name("feature", arg)?, ascii(payload, "feature value")?)
        }
        "admin.vm.feature.CheckWithTemplate" => {
            Call::FeatureCheck(Chain::Template, arg_name("feature", arg)?)
        }
        "admin.vm.feature.CheckWithNetvm" => {
            Call::FeatureCheck(Chain::Netvm, arg_name("feature", arg)?)
        }
        "admin.vm.feature.CheckWithAdminVM" => {
            Call::FeatureCheck(Chain::AdminVm, arg_name("feature", arg)?)
        }
        "admin.vm.feature.CheckWithTemplateAndAdminVM" => {
            Call::FeatureCheck(Chain::TemplateAndAdminVm, arg_name("feature", arg)?)
        }
        "admin.vm.tag.List" => Call::TagList,
        "admin.vm.tag.Get" => Call::TagGet(arg_name("tag", arg)?),
        "admin.vm.tag.Set" => Call::TagSet(arg_name("tag", arg)?),
        "admin.vm.tag.Remove" => Call::TagRemove(arg_name("tag", arg)?),
        "admin.label.List" => Call::LabelList,
        "admin.label.Get" => Call::LabelGet(arg_name("label", arg)?),
        "admin.label.Index" => Call::LabelIndex(arg_name("label", arg)?),
        "admin.label.Remove" => Call::LabelRemove(arg_name("label", arg)?),
        "admin.label.Create" => {
            let name = arg_name("label", arg)?;
            let color = ascii(payload, "label colour")?;
            let ok = color.len() == 8
                && color.starts_with("0x")
                && color[2..].bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(ApiError::protocol(format!(
                    "invalid colour '{color}': expected 0xRRGGBB"
                )));
            }
            Call::LabelCreate(name, color.to_ascii_lowercase())
        }
        _ => {
            // Only Create/CreateInPool reach here (the table covers the rest).
            let class = create_class
                .and_then(Class::parse)
                .ok_or_else(|| ApiError::protocol(format!("no such method: '{method}'")))?;
            Call::Create(decode_create(class, arg, payload, in_pool)?)
        }
    };
    Ok((Ctx { source, dest }, call))
}

fn volume_arg(arg: &str) -> ApiResult<String> {
    if !VOLUME_NAMES.contains(&arg) {
        return Err(ApiError::value(format!(
            "no volume '{arg}' (volumes: {})",
            VOLUME_NAMES.join(", ")
        )));
    }
    Ok(arg.to_string())
}

fn prop_arg(arg: &str) -> ApiResult<String> {
    // Property names are identifiers; anything else cannot exist.
    if arg.len() > 64 || !arg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ApiError::protocol(format!("invalid property name '{arg}'")));
    }
    Ok(arg.to_string())
}

fn decode_create(class: Class, arg: &str, payload: &[u8], in_pool: bool) -> ApiResult<CreateArgs> {
    let text = ascii(payload, "create payload")?;
    let mut kv: BTreeMap<String, String> = BTreeMap::new();
    for part in text.split(' ') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(ApiError::protocol(format!(
                "malformed option '{part}': expected key=value"
            )));
        };
        let allowed = matches!(k, "name" | "label")
            || (in_pool
                && (k == "pool"
                    || k.strip_prefix("pool:")
                        .is_some_and(|v| VOLUME_NAMES.contains(&v))));
        if !allowed {
            return Err(ApiError::protocol(format!("unexpected option '{k}'")));
        }
        if kv.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::protocol(format!("option '{k}' given twice")));
        }
    }
    let name = kv
        .remove("name")
        .ok_or_else(|| ApiError::protocol("missing name="))?;
    let label = kv
        .remove("label")
        .ok_or_else(|| ApiError::protocol("missing label="))?;
    validate_vm_name(&name).map_err(|e| ApiError::value(format!("{e}: '{name}'")))?;
    if kv.contains_key("pool") && kv.len() > 1 {
        return Err(ApiError::protocol(
            "pool= and pool:<volume>= cannot be combined",
        ));
    }
    let mut pools = BTreeMap::new();
    for (k, v) in kv {
        if !KNOWN_POOLS.contains(&v.as_str()) {
            return Err(ApiError::value(format!(
                "No such pool: '{v}' (known pools: {})",
                KNOWN_POOLS.join(", ")
            )));
        }
        let vol = k.strip_prefix("pool:").unwrap_or("*");
        pools.insert(vol.to_string(), v);
    }
    let template = if arg.is_empty() {
        None
    } else {
        if arg != DOM0 {
            validate_vm_name(arg).map_err(|e| ApiError::value(format!("{e}: '{arg}'")))?;
        }
        Some(arg.to_string())
    };
    Ok(CreateArgs {
        class,
        template,
        name,
        label,
        pools,
    })
}

/// Makes notes safe to show: valid UTF-8, no control characters except
/// newline and tab (each replaced by `_`).
pub fn sanitize_notes(untrusted: &[u8]) -> String {
    String::from_utf8_lossy(untrusted)
        .chars()
        .map(|c| {
            if (c.is_control() && c != '\n' && c != '\t') || c == '\u{fffd}' {
                '_'
            } else {
                c
            }
        })
        .collect()
}
