//! Property-based tests of validation, on the pure model (no daemon):
//! every accepted value reads back as set and can be set again unchanged;
//! no sequence of calls leaves the state inconsistent.

use bulkhead_proto::admin::{encode_request, parse_request};
use bulkheadd::api::{self, Call};
use bulkheadd::error::Exc;
use bulkheadd::model::{check_consistency, App, HostInfo};
use proptest::prelude::*;

fn call(
    app: &mut App,
    method: &str,
    arg: &str,
    dest: &str,
    payload: &[u8],
) -> Result<String, bulkheadd::error::ApiError> {
    let req = parse_request(&encode_request(method, arg, "dom0", dest, payload))
        .map_err(|e| bulkheadd::error::ApiError::protocol(e.to_string()))?;
    let (ctx, c) = api::decode(app, &req)?;
    if c.is_write() {
        let mut cand = app.clone();
        let (body, _) = api::mutate(&mut cand, &ctx, &c, || 5)?;
        *app = cand;
        Ok(body)
    } else {
        assert_ne!(c, Call::Events);
        api::query(app, &ctx, &c)
    }
}

fn fixture() -> App {
    let mut app = App::new(HostInfo::default());
    call(
        &mut app,
        "admin.vm.Create.TemplateVM",
        "",
        "dom0",
        b"name=tpl label=black",
    )
    .unwrap();
    call(
        &mut app,
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=work label=red",
    )
    .unwrap();
    call(
        &mut app,
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=net label=red",
    )
    .unwrap();
    call(
        &mut app,
        "admin.vm.property.Set",
        "provides_network",
        "net",
        b"True",
    )
    .unwrap();
    call(
        &mut app,
        "admin.vm.property.Set",
        "template_for_dispvms",
        "work",
        b"True",
    )
    .unwrap();
    app
}

const PROPS: &[&str] = &[
    "audiovm",
    "autostart",
    "backup_timestamp",
    "debug",
    "default_dispvm",
    "default_user",
    "devices_denied",
    "guivm",
    "include_in_backups",
    "ip",
    "ip6",
    "kernel",
    "kernelopts",
    "keyboard_layout",
    "label",
    "mac",
    "management_dispvm",
    "maxmem",
    "memory",
    "netvm",
    "provides_network",
    "qrexec_timeout",
    "shutdown_timeout",
    "template",
    "template_for_dispvms",
    "vcpus",
    "virt_mode",
    "name",
    "qid",
    "uuid",
    "icon",
    "klass",
];

fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,12}",
        Just("True".to_string()),
        Just("false".to_string()),
        Just(String::new()),
        "-?[0-9]{1,6}",
        Just("tpl".to_string()),
        Just("net".to_string()),
        Just("work".to_string()),
        Just("dom0".to_string()),
        Just("red".to_string()),
        Just("ns".to_string()),
        Just("10.1.2.3".to_string()),
        Just("00:16:3e:00:00:01".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn accepted_values_read_back_and_round_trip(
        holder in prop::sample::select(vec!["work", "tpl", "net", "dom0"]),
        prop in prop::sample::select(PROPS.to_vec()),
        value in value_strategy(),
    ) {
        let mut app = fixture();
        match call(&mut app, "admin.vm.property.Set", prop, holder, value.as_bytes()) {
            Ok(body) => {
                prop_assert_eq!(body, "");
                check_consistency(&app).unwrap();
                let got = call(&mut app, "admin.vm.property.Get", prop, holder, b"").unwrap();
                prop_assert!(got.starts_with("default=False type="), "{}", got);
                let shown = got.splitn(3, ' ').nth(2).unwrap().to_string();
                // Setting what we read back is accepted and changes nothing.
                let before = app.clone();
                call(&mut app, "admin.vm.property.Set", prop, holder, shown.as_bytes()).unwrap();
                prop_assert_eq!(&before, &app);
                // Reset is either refused (no default) or returns to default=True.
                if call(&mut app, "admin.vm.property.Reset", prop, holder, b"").is_ok() {
                    let got = call(&mut app, "admin.vm.property.Get", prop, holder, b"").unwrap();
                    prop_assert!(got.starts_with("default=True"), "{}", got);
                }
            }
            Err(e) => {
                // Refusals are Qubes exceptions and leave the state untouched.
                prop_assert!(e.exc != Exc::QubesException || !e.message.is_empty());
                prop_assert_eq!(&app, &fixture_with_same_ids(&app));
            }
        }
    }

    #[test]
    fn random_call_sequences_keep_the_state_consistent(
        ops in prop::collection::vec(
            (0u8..8, prop::sample::select(vec!["work", "tpl", "net", "x1", "x2", "dom0"]), value_strategy()),
            1..30,
        )
    ) {
        let mut app = fixture();
        for (op, target, value) in ops {
            let _ = match op {
                0 => call(&mut app, "admin.vm.Create.AppVM", "tpl", "dom0", format!("name={target} label=red").as_bytes()),
                1 => call(&mut app, "admin.vm.Remove", "", target, b""),
                2 => call(&mut app, "admin.vm.property.Set", "netvm", target, value.as_bytes()),
                3 => call(&mut app, "admin.vm.property.Set", "provides_network", target, value.as_bytes()),
                4 => call(&mut app, "admin.property.Set", "default_netvm", "dom0", value.as_bytes()),
                5 => call(&mut app, "admin.vm.property.Set", "template_for_dispvms", target, value.as_bytes()),
                6 => call(&mut app, "admin.property.Set", "default_dispvm", "dom0", value.as_bytes()),
                _ => call(&mut app, "admin.vm.Create.DispVM", &value, "dom0", format!("name={target} label=red").as_bytes()),
            };
            check_consistency(&app).unwrap();
            // Every qube still answers GetAll.
            for name in app.qubes.keys().cloned().collect::<Vec<_>>() {
                call(&mut app, "admin.vm.property.GetAll", "", &name, b"").unwrap();
            }
        }
    }
}

/// The fixture is deterministic except for UUIDs; compare ignoring them.
fn fixture_with_same_ids(app: &App) -> App {
    let mut f = fixture();
    for (name, q) in f.qubes.iter_mut() {
        if let Some(orig) = app.qubes.get(name) {
            q.uuid = orig.uuid;
        }
    }
    f
}
