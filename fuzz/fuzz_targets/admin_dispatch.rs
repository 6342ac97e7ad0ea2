//! Fuzzes everything the daemon does with a request short of I/O: framing,
//! decoding into a typed call, and executing it against a populated state.
//! Any panic, or a state left inconsistent after a successful call, is a bug.
#![no_main]

use bulkheadd::api;
use bulkheadd::model::{check_consistency, App, HostInfo};
use libfuzzer_sys::fuzz_target;

fn fixture() -> App {
    let mut app = App::new(HostInfo::default());
    let ctx = |dest: &str| api::Ctx { source: "dom0".into(), dest: dest.into() };
    let run = |app: &mut App, m: &str, arg: &str, dest: &str, payload: &[u8]| {
        let raw = bulkhead_proto::admin::encode_request(m, arg, "dom0", dest, payload);
        let req = bulkhead_proto::admin::parse_request(&raw).unwrap();
        let (c, call) = api::decode(app, &req).unwrap();
        assert_eq!(c, ctx(dest));
        api::mutate(app, &c, &call, || 7).unwrap();
    };
    run(&mut app, "admin.vm.Create.TemplateVM", "", "dom0", b"name=tpl label=black");
    run(&mut app, "admin.vm.Create.AppVM", "tpl", "dom0", b"name=work label=red");
    run(&mut app, "admin.vm.Create.AppVM", "tpl", "dom0", b"name=net label=orange");
    run(&mut app, "admin.vm.property.Set", "provides_network", "net", b"True");
    run(&mut app, "admin.vm.property.Set", "netvm", "work", b"net");
    run(&mut app, "admin.vm.property.Set", "template_for_dispvms", "work", b"True");
    run(&mut app, "admin.vm.Create.DispVM", "work", "dom0", b"name=disp1 label=red");
    run(&mut app, "admin.vm.feature.Set", "f", "tpl", b"1");
    app
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static BASE: App = fixture();
    }
    let Ok(req) = bulkhead_proto::admin::parse_request(data) else { return };
    BASE.with(|base| {
        let mut app = base.clone();
        let Ok((ctx, call)) = api::decode(&app, &req) else { return };
        if call.is_write() {
            if api::mutate(&mut app, &ctx, &call, || 42).is_ok() {
                check_consistency(&app).expect("a successful write left the state consistent");
                // The result must survive a save/load round trip.
                let json = serde_json_roundtrip(&app);
                assert_eq!(json, app);
            }
        } else if call != api::Call::Events {
            let _ = api::query(&app, &ctx, &call);
        }
    });
});

fn serde_json_roundtrip(app: &App) -> App {
    let dir = std::env::temp_dir();
    let path = dir.join("fuzz-state-roundtrip.json");
    let bytes = bulkheadd::store::encode_state(app);
    let mut back = bulkheadd::store::parse_state(&path, &bytes).expect("saved state loads");
    back.set_runtime(app.host);
    for (name, q) in &app.qubes {
        if let Some(b) = back.qubes.get_mut(name) {
            b.power = q.power;
        }
    }
    back
}
