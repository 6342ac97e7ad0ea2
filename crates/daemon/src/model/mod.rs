//! The domain model: qubes, their classes, properties, labels, features, tags.
//!
//! Pure data plus the rules that keep it consistent; no I/O. The daemon keeps
//! one [`App`] and persists it through `store`.

mod graph;
pub mod props;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, Exc};

pub use graph::{check_consistency, referrers};

/// Qube classes (Qubes' `klass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Class {
    AdminVM,
    AppVM,
    DispVM,
    StandaloneVM,
    TemplateVM,
}

impl Class {
    /// Every class, sorted by name (the order `admin.vmclass.List` prints).
    pub const ALL: [Class; 5] = [
        Class::AdminVM,
        Class::AppVM,
        Class::DispVM,
        Class::StandaloneVM,
        Class::TemplateVM,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::AdminVM => "AdminVM",
            Class::AppVM => "AppVM",
            Class::DispVM => "DispVM",
            Class::StandaloneVM => "StandaloneVM",
            Class::TemplateVM => "TemplateVM",
        }
    }

    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Bit used in property scopes.
    pub(crate) fn bit(self) -> u8 {
        match self {
            Class::AdminVM => props::ADMIN,
            Class::AppVM => props::APP,
            Class::DispVM => props::DISP,
            Class::StandaloneVM => props::STANDALONE,
            Class::TemplateVM => props::TEMPLATE,
        }
    }

    /// Whether qubes of this class are based on a template.
    pub fn has_template(self) -> bool {
        matches!(self, Class::AppVM | Class::DispVM)
    }
}

/// Power states, as Qubes names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerState {
    Halted,
    Transient,
    Running,
    Paused,
    Suspended,
    Halting,
    Dying,
    Crashed,
    NA,
}

impl PowerState {
    pub fn name(self) -> &'static str {
        match self {
            PowerState::Halted => "Halted",
            PowerState::Transient => "Transient",
            PowerState::Running => "Running",
            PowerState::Paused => "Paused",
            PowerState::Suspended => "Suspended",
            PowerState::Halting => "Halting",
            PowerState::Dying => "Dying",
            PowerState::Crashed => "Crashed",
            PowerState::NA => "NA",
        }
    }
}

/// A label: an index and a colour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub index: u32,
    pub name: String,
    /// `0xRRGGBB`, lower-case hex.
    pub color: String,
}

/// Qubes' eight built-in labels; indexes above this are custom.
pub const MAX_DEFAULT_LABEL: u32 = 8;

fn default_labels() -> BTreeMap<u32, Label> {
    [
        (1, "red", "0xcc0000"),
        (2, "orange", "0xf57900"),
        (3, "yellow", "0xedd400"),
        (4, "green", "0x73d216"),
        (5, "gray", "0x555555"),
        (6, "blue", "0x3465a4"),
        (7, "purple", "0x75507b"),
        (8, "black", "0x000000"),
    ]
    .into_iter()
    .map(|(i, n, c)| {
        (
            i,
            Label {
                index: i,
                name: n.into(),
                color: c.into(),
            },
        )
    })
    .collect()
}

/// The value of a property. `None` inside means "no value" (Qubes' None),
/// printed as an empty string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v")]
pub enum Value {
    Vm(Option<String>),
    Int(Option<i64>),
    Bool(bool),
    Label(String),
    Str(Option<String>),
}

impl Value {
    /// The text Qubes' `str(value)` gives, as used in `property.Get`.
    pub fn to_text(&self) -> String {
        match self {
            Value::Vm(v) | Value::Str(v) => v.clone().unwrap_or_default(),
            Value::Int(v) => v.map(|i| i.to_string()).unwrap_or_default(),
            Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            Value::Label(l) => l.clone(),
        }
    }

    /// Text as Python's `str()` gives it in event keyword arguments (None → `None`).
    pub fn to_event_text(&self) -> String {
        match self {
            Value::Vm(None) | Value::Str(None) | Value::Int(None) => "None".into(),
            other => other.to_text(),
        }
    }

    pub fn as_vm(&self) -> Option<&str> {
        match self {
            Value::Vm(Some(v)) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> bool {
        matches!(self, Value::Bool(true))
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => *v,
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(Some(s)) | Value::Label(s) => Some(s),
            _ => None,
        }
    }
}

/// One qube's persistent definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qube {
    pub name: String,
    pub qid: u32,
    pub uuid: Uuid,
    pub class: Class,
    /// Explicitly set properties (everything else is at its default).
    pub props: BTreeMap<String, Value>,
    pub features: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    pub notes: String,
    /// Pool per volume chosen at creation (`admin.vm.CreateInPool`).
    #[serde(default)]
    pub pools: BTreeMap<String, String>,
    /// Per-volume settings changed from the class defaults (size, revisions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, VolumeSettings>,
    /// Runtime state, not persisted.
    #[serde(skip, default = "halted")]
    pub power: PowerState,
}

/// A volume's settings that differ from its class default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revisions_to_keep: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rw: Option<bool>,
}

fn halted() -> PowerState {
    PowerState::Halted
}

/// Facts about the host the defaults depend on (not persisted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostInfo {
    pub mem_total_kib: u64,
}

impl Default for HostInfo {
    fn default() -> Self {
        Self {
            mem_total_kib: 8 << 20,
        }
    }
}

/// Everything the daemon knows: qubes, labels, global properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub qubes: BTreeMap<String, Qube>,
    pub labels: BTreeMap<u32, Label>,
    /// Explicitly set global properties.
    pub global_props: BTreeMap<String, Value>,
    #[serde(skip)]
    pub host: HostInfo,
}

/// The name of the admin qube (the host).
pub const DOM0: &str = "dom0";

/// Pools that exist before the storage layer lands.
pub const KNOWN_POOLS: [&str; 2] = ["default", "linux-kernel"];

/// Volume names a pool can be chosen for.
pub const VOLUME_NAMES: [&str; 4] = ["root", "private", "volatile", "kernel"];

impl App {
    /// A fresh installation: dom0 and the default labels.
    pub fn new(host: HostInfo) -> Self {
        let mut qubes = BTreeMap::new();
        let mut props = BTreeMap::new();
        props.insert("label".into(), Value::Label("black".into()));
        qubes.insert(
            DOM0.to_string(),
            Qube {
                name: DOM0.into(),
                qid: 0,
                uuid: Uuid::nil(),
                class: Class::AdminVM,
                props,
                features: BTreeMap::new(),
                tags: BTreeSet::new(),
                notes: String::new(),
                pools: BTreeMap::new(),
                volumes: BTreeMap::new(),
                power: PowerState::Running,
            },
        );
        App {
            qubes,
            labels: default_labels(),
            global_props: BTreeMap::new(),
            host,
        }
    }

    /// Call after loading from disk: runtime-only fields.
    pub fn set_runtime(&mut self, host: HostInfo) {
        self.host = host;
        if let Some(d) = self.qubes.get_mut(DOM0) {
            d.power = PowerState::Running;
        }
    }

    /// Looks a qube up by name or `uuid:<uuid>`, as Qubes' `decode_vm`.
    pub fn resolve_vm(&self, untrusted: &str) -> ApiResult<&Qube> {
        if let Some(u) = untrusted.strip_prefix("uuid:") {
            let valid = untrusted.len() == 41
                && u.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
            let parsed = if valid { Uuid::parse_str(u).ok() } else { None };
            let Some(uuid) = parsed else {
                return Err(ApiError::new(
                    Exc::QubesVMInvalidUUIDError,
                    format!("VM UUID is not valid: '{u}'"),
                ));
            };
            return self
                .qubes
                .values()
                .find(|q| q.uuid == uuid)
                .ok_or_else(|| ApiError::vm_not_found(u));
        }
        bulkhead_proto::names::validate_vm_name(untrusted)
            .map_err(|e| ApiError::value(format!("{e}: '{untrusted}'")))?;
        self.qubes
            .get(untrusted)
            .ok_or_else(|| ApiError::vm_not_found(untrusted))
    }

    pub fn vm(&self, name: &str) -> ApiResult<&Qube> {
        self.qubes
            .get(name)
            .ok_or_else(|| ApiError::vm_not_found(name))
    }

    pub fn vm_mut(&mut self, name: &str) -> ApiResult<&mut Qube> {
        self.qubes
            .get_mut(name)
            .ok_or_else(|| ApiError::vm_not_found(name))
    }

    pub fn label_by_name(&self, name: &str) -> Option<&Label> {
        self.labels.values().find(|l| l.name == name)
    }

    /// Lowest free qid (Qubes allocates the same way).
    pub fn next_qid(&self) -> ApiResult<u32> {
        let used: BTreeSet<u32> = self.qubes.values().map(|q| q.qid).collect();
        (1..=props::MAX_QID)
            .find(|q| !used.contains(q))
            .ok_or_else(|| {
                ApiError::new(
                    Exc::QubesException,
                    "No free qid left: remove unused qubes first",
                )
            })
    }

    /// A random unused disposable id (1..=9999), as Qubes does.
    pub fn next_dispid(&self, mut random: impl FnMut() -> u32) -> ApiResult<u32> {
        let used: BTreeSet<i64> = self
            .qubes
            .values()
            .filter_map(|q| q.props.get("dispid").and_then(Value::as_int))
            .collect();
        if used.len() >= 9999 {
            return Err(ApiError::new(
                Exc::QubesException,
                "No free disposable id left",
            ));
        }
        // A few random tries (ids are not guessable), then the first free one,
        // so a poor random source can never make this loop forever.
        for _ in 0..64 {
            let id = random() % 9999 + 1;
            if !used.contains(&i64::from(id)) {
                return Ok(id);
            }
        }
        (1..=9999u32)
            .find(|id| !used.contains(&i64::from(*id)))
            .ok_or_else(|| ApiError::new(Exc::QubesException, "No free disposable id left"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_app_has_dom0_and_eight_labels() {
        let app = App::new(HostInfo::default());
        let d = app.vm("dom0").unwrap();
        assert_eq!(d.qid, 0);
        assert_eq!(d.uuid.to_string(), "00000000-0000-0000-0000-000000000000");
        assert_eq!(app.labels.len(), 8);
        assert_eq!(app.label_by_name("blue").unwrap().color, "0x3465a4");
    }

    #[test]
    fn dispid_allocation_terminates_with_a_constant_random_source() {
        // Regression: a constant "random" source used to spin forever once
        // its one id was taken.
        let mut app = App::new(HostInfo::default());
        for expected in [6, 1, 2] {
            let id = app.next_dispid(|| 5).unwrap();
            assert_eq!(id, expected);
            let mut q = app.qubes["dom0"].clone();
            q.name = format!("d{id}");
            q.props.insert("dispid".into(), Value::Int(Some(id.into())));
            app.qubes.insert(q.name.clone(), q);
        }
    }

    #[test]
    fn resolve_vm_by_uuid_and_bad_uuid() {
        let app = App::new(HostInfo::default());
        assert_eq!(
            app.resolve_vm("uuid:00000000-0000-0000-0000-000000000000")
                .unwrap()
                .name,
            "dom0"
        );
        assert_eq!(
            app.resolve_vm("uuid:xyz").unwrap_err().exc,
            Exc::QubesVMInvalidUUIDError
        );
        assert_eq!(
            app.resolve_vm("nope").unwrap_err().exc,
            Exc::QubesVMNotFoundError
        );
        assert_eq!(
            app.resolve_vm("bad name").unwrap_err().exc,
            Exc::QubesValueError
        );
    }
}
