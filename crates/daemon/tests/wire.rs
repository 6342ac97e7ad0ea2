//! Exact reply bytes of every Admin API method, including exception paths,
//! against a real daemon over its socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{exc, Daemon};

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

macro_rules! check {
    ($d:expr, $method:expr, $arg:expr, $dest:expr, $payload:expr, $want:expr) => {{
        let got = $d.req($method, $arg, $dest, $payload);
        assert_eq!(s(&got), s($want), "{}+{} on {}", $method, $arg, $dest);
    }};
}

fn setup(d: &Daemon) {
    d.ok(
        "admin.vm.Create.TemplateVM",
        "",
        "dom0",
        b"name=tpl label=black",
    );
    d.ok(
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=work label=red",
    );
}

#[test]
fn global_listings() {
    let d = Daemon::start();
    check!(
        d,
        "admin.vmclass.List",
        "",
        "dom0",
        b"",
        b"0\0AdminVM\nAppVM\nDispVM\nStandaloneVM\nTemplateVM\n"
    );
    check!(
        d,
        "admin.vm.List",
        "",
        "dom0",
        b"",
        b"0\0dom0 class=AdminVM state=Running uuid=00000000-0000-0000-0000-000000000000\n"
    );
    check!(
        d,
        "admin.label.List",
        "",
        "dom0",
        b"",
        b"0\0red\norange\nyellow\ngreen\ngray\nblue\npurple\nblack\n"
    );
    check!(d, "admin.label.Get", "red", "dom0", b"", b"0\x000xcc0000");
    check!(d, "admin.label.Index", "purple", "dom0", b"", b"0\x007");
    check!(
        d,
        "admin.label.Get",
        "nolabel",
        "dom0",
        b"",
        &exc("QubesLabelNotFoundError", "Label does not exist: nolabel")
    );
    let cur = d.ok("admin.vm.CurrentState", "", "dom0", b"");
    assert!(
        cur.starts_with("mem=") && cur.ends_with(" cputime=0 power_state=Running"),
        "{cur}"
    );
}

#[test]
fn create_list_and_errors() {
    let d = Daemon::start();
    check!(
        d,
        "admin.vm.Create.AppVM",
        "",
        "dom0",
        b"name=work label=red",
        &exc(
            "QubesValueError",
            "no template given and global default_template is not set; pass one"
        )
    );
    check!(
        d,
        "admin.vm.Create.TemplateVM",
        "",
        "dom0",
        b"name=tpl label=black",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=work label=red",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=work label=red",
        &exc("QubesVMAlreadyExistsError", "VM work already exists")
    );
    check!(
        d,
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=x label=mauve",
        &exc("QubesLabelNotFoundError", "Label does not exist: mauve")
    );
    check!(
        d,
        "admin.vm.Create.AppVM",
        "work",
        "dom0",
        b"name=x label=red",
        &exc(
            "QubesValueError",
            "'work' cannot be the template of a AppVM: it must be a TemplateVM"
        )
    );
    check!(
        d,
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=1x label=red",
        &exc(
            "QubesValueError",
            "VM name must start with a letter and contain only letters, digits, '_', '.' and '-': '1x'"
        )
    );
    check!(
        d,
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=x",
        &exc("ProtocolError", "missing label=")
    );
    check!(
        d,
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=x label=red pool=default",
        &exc("ProtocolError", "unexpected option 'pool'")
    );
    check!(
        d,
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=x label=red name=y",
        &exc("ProtocolError", "option 'name' given twice")
    );
    check!(
        d,
        "admin.vm.Create.AdminVM",
        "",
        "dom0",
        b"name=x label=red",
        &exc("ProtocolError", "no such method: 'admin.vm.Create.AdminVM'")
    );
    check!(
        d,
        "admin.vm.Create.AppVM",
        "tpl",
        "work",
        b"name=x label=red",
        &exc("ProtocolError", "expected destination to be AdminVM")
    );
    check!(
        d,
        "admin.vm.CreateInPool.StandaloneVM",
        "",
        "dom0",
        b"name=sa label=purple pool=default",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.CreateInPool.StandaloneVM",
        "",
        "dom0",
        b"name=sb label=purple pool=default pool:root=default",
        &exc(
            "ProtocolError",
            "pool= and pool:<volume>= cannot be combined"
        )
    );
    check!(
        d,
        "admin.vm.CreateInPool.StandaloneVM",
        "",
        "dom0",
        b"name=sb label=purple pool:private=nope",
        &exc(
            "QubesValueError",
            "No such pool: 'nope' (known pools: default, linux-kernel)"
        )
    );
    // Dispvm template and a named DispVM.
    check!(d, "admin.vm.Create.DispVM", "work", "dom0", b"name=d1 label=red", &exc("QubesValueError", "'work' cannot be the template of a DispVM: it must be an AppVM with template_for_dispvms=True"));
    check!(
        d,
        "admin.vm.property.Set",
        "template_for_dispvms",
        "work",
        b"True",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.Create.DispVM",
        "work",
        "dom0",
        b"name=d1 label=red",
        b"0\0"
    );
    let dispid = d.ok("admin.vm.property.Get", "dispid", "d1", b"");
    assert!(dispid.starts_with("default=False type=int "), "{dispid}");
    check!(
        d,
        "admin.vm.property.Get",
        "default_dispvm",
        "d1",
        b"",
        b"0\0default=True type=vm work"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "icon",
        "work",
        b"",
        b"0\0default=True type=str templatevm-red"
    );

    let list = d.ok("admin.vm.List", "", "dom0", b"");
    let names: Vec<&str> = list.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["d1", "dom0", "sa", "tpl", "work"]);
    for l in list.lines() {
        let parts: Vec<&str> = l.split(' ').collect();
        assert_eq!(parts.len(), 4, "{l}");
        assert!(parts[2] == "state=Halted" || parts[0] == "dom0", "{l}");
        assert_eq!(parts[3].len(), "uuid=".len() + 36, "{l}");
    }
    let work_line = list
        .lines()
        .find(|l| l.starts_with("work "))
        .unwrap()
        .to_string();
    check!(
        d,
        "admin.vm.List",
        "",
        "work",
        b"",
        format!("0\0{work_line}\n").as_bytes()
    );
    let uuid = work_line.rsplit("uuid=").next().unwrap();
    check!(
        d,
        "admin.vm.List",
        "",
        &format!("uuid:{uuid}"),
        b"",
        format!("0\0{work_line}\n").as_bytes()
    );
    check!(
        d,
        "admin.vm.List",
        "",
        "uuid:nope",
        b"",
        &exc("QubesVMInvalidUUIDError", "VM UUID is not valid: 'nope'")
    );
    check!(
        d,
        "admin.vm.List",
        "",
        "ghost",
        b"",
        &exc("QubesVMNotFoundError", "No such domain: 'ghost'")
    );
    check!(
        d,
        "admin.vm.tag.List",
        "",
        "work",
        b"",
        b"0\0created-by-dom0\n"
    );
    check!(
        d,
        "admin.vm.CurrentState",
        "",
        "work",
        b"",
        b"0\0mem=0 mem_static_max=0 cputime=0 power_state=Halted"
    );
}

#[test]
fn properties() {
    let d = Daemon::start();
    setup(&d);
    check!(
        d,
        "admin.vm.property.Get",
        "netvm",
        "work",
        b"",
        b"0\0default=True type=vm "
    );
    check!(
        d,
        "admin.vm.property.Get",
        "label",
        "work",
        b"",
        b"0\0default=False type=label red"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "memory",
        "work",
        b"",
        b"0\0default=True type=int 400"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "qid",
        "work",
        b"",
        b"0\0default=False type=int 2"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "name",
        "work",
        b"",
        b"0\0default=False type=str work"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "template",
        "work",
        b"",
        b"0\0default=False type=vm tpl"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "virt_mode",
        "work",
        b"",
        b"0\0default=True type=str vm"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "updateable",
        "tpl",
        b"",
        b"0\0default=True type=bool True"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "nosuch",
        "work",
        b"",
        &exc(
            "QubesNoSuchPropertyError",
            "Invalid property 'nosuch' of work"
        )
    );
    check!(
        d,
        "admin.vm.property.Get",
        "template",
        "tpl",
        b"",
        &exc(
            "QubesNoSuchPropertyError",
            "Invalid property 'template' of tpl"
        )
    );
    check!(
        d,
        "admin.vm.property.Get",
        "bad-name",
        "work",
        b"",
        &exc("ProtocolError", "invalid property name 'bad-name'")
    );
    check!(
        d,
        "admin.vm.property.Get",
        "",
        "work",
        b"",
        &exc("ProtocolError", "expected an argument")
    );
    check!(
        d,
        "admin.vm.property.Get",
        "memory",
        "work",
        b"x",
        &exc("ProtocolError", "unexpected payload")
    );

    // Inheritance: template, then global.
    check!(d, "admin.vm.property.Set", "memory", "tpl", b"1000", b"0\0");
    check!(
        d,
        "admin.vm.property.Get",
        "memory",
        "work",
        b"",
        b"0\0default=True type=int 1000"
    );
    check!(d, "admin.vm.property.Set", "memory", "work", b"800", b"0\0");
    check!(
        d,
        "admin.vm.property.Get",
        "memory",
        "work",
        b"",
        b"0\0default=False type=int 800"
    );
    check!(
        d,
        "admin.vm.property.GetDefault",
        "memory",
        "work",
        b"",
        b"0\0type=int 1000"
    );
    check!(d, "admin.vm.property.Reset", "memory", "work", b"", b"0\0");
    check!(
        d,
        "admin.vm.property.Get",
        "memory",
        "work",
        b"",
        b"0\0default=True type=int 1000"
    );
    check!(
        d,
        "admin.vm.property.Set",
        "default_qrexec_timeout",
        "dom0",
        b"5",
        &exc(
            "QubesNoSuchPropertyError",
            "Invalid property 'default_qrexec_timeout' of dom0"
        )
    );
    check!(
        d,
        "admin.property.Set",
        "default_qrexec_timeout",
        "dom0",
        b"5",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "qrexec_timeout",
        "work",
        b"",
        b"0\0default=True type=int 5"
    );
    check!(
        d,
        "admin.property.Set",
        "default_virt_mode",
        "dom0",
        b"ns",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "virt_mode",
        "work",
        b"",
        b"0\0default=True type=str ns"
    );
    check!(
        d,
        "admin.vm.property.Set",
        "virt_mode",
        "work",
        b"xen",
        &exc(
            "QubesPropertyValueError",
            "Invalid value 'xen' for property 'virt_mode' of 'work': expected 'vm' or 'ns'"
        )
    );

    check!(
        d,
        "admin.vm.property.GetDefault",
        "label",
        "work",
        b"",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.property.Help",
        "memory",
        "work",
        b"",
        b"0\0Memory (MiB) at start."
    );
    check!(
        d,
        "admin.vm.property.Set",
        "memory",
        "work",
        b"abc",
        &exc(
            "QubesPropertyValueError",
            "Invalid value 'abc' for property 'memory' of 'work': expected a decimal integer"
        )
    );
    check!(
        d,
        "admin.vm.property.Set",
        "memory",
        "work",
        b"0",
        &exc(
            "QubesPropertyValueError",
            "Invalid value '0' for property 'memory' of 'work': must be at least 1"
        )
    );
    check!(
        d,
        "admin.vm.property.Set",
        "debug",
        "work",
        b"maybe",
        &exc(
            "QubesPropertyValueError",
            "Invalid value 'maybe' for property 'debug' of 'work': expected True or False"
        )
    );
    check!(d, "admin.vm.property.Set", "debug", "work", b"on", b"0\0");
    check!(
        d,
        "admin.vm.property.Get",
        "debug",
        "work",
        b"",
        b"0\0default=False type=bool True"
    );
    check!(
        d,
        "admin.vm.property.Set",
        "label",
        "work",
        b"mauve",
        &exc("QubesLabelNotFoundError", "Label does not exist: mauve")
    );
    check!(
        d,
        "admin.vm.property.Set",
        "label",
        "work",
        b"green",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.property.Reset",
        "label",
        "work",
        b"",
        &exc(
            "QubesPropertyValueError",
            "Property 'label' of 'work' has no default and cannot be reset"
        )
    );
    check!(
        d,
        "admin.vm.property.Set",
        "qid",
        "work",
        b"7",
        &exc(
            "QubesPropertyValueError",
            "Property 'qid' of 'work' is read-only; it cannot be set"
        )
    );
    check!(
        d,
        "admin.vm.property.Set",
        "kernelopts",
        "work",
        "caf\u{e9}".as_bytes(),
        &exc(
            "QubesPropertyValueError",
            "Value for property 'kernelopts' of 'work' must be printable ASCII"
        )
    );

    // netvm rules: must provide network, no loops.
    d.ok(
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=sys-net label=red",
    );
    check!(d, "admin.vm.property.Set", "netvm", "work", b"sys-net", &exc("QubesPropertyValueError", "Invalid value 'sys-net' for property 'netvm' of 'work': qube 'sys-net' does not provide network; set its provides_network to True first"));
    check!(
        d,
        "admin.vm.property.Set",
        "netvm",
        "work",
        b"ghost",
        &exc(
            "QubesPropertyValueError",
            "Invalid value 'ghost' for property 'netvm' of 'work': qube 'ghost' does not exist"
        )
    );
    check!(
        d,
        "admin.vm.property.Set",
        "provides_network",
        "sys-net",
        b"True",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.property.Set",
        "provides_network",
        "work",
        b"True",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.property.Set",
        "netvm",
        "work",
        b"sys-net",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.property.Set",
        "netvm",
        "sys-net",
        b"work",
        &exc(
            "QubesValueError",
            "netvm loop: 'sys-net' would reach itself through 'sys-net'; choose another netvm"
        )
    );
    check!(d, "admin.vm.property.Set", "provides_network", "sys-net", b"False", &exc("QubesValueError", "netvm of qube 'work' is 'sys-net', which would no longer provide network; disconnect it first"));
    check!(
        d,
        "admin.vm.property.Get",
        "ip",
        "work",
        b"",
        b"0\0default=True type=str 10.137.0.2"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "visible_gateway",
        "work",
        b"",
        b"0\0default=True type=str 10.137.0.3"
    );
    check!(d, "admin.vm.property.Set", "netvm", "work", b"", b"0\0");
    check!(
        d,
        "admin.vm.property.Get",
        "netvm",
        "work",
        b"",
        b"0\0default=False type=vm "
    );
    // Still networked: work itself provides network (Qubes' is_networked).
    check!(
        d,
        "admin.vm.property.Get",
        "ip",
        "work",
        b"",
        b"0\0default=True type=str 10.137.0.2"
    );
    check!(
        d,
        "admin.vm.property.Set",
        "provides_network",
        "work",
        b"False",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.property.Get",
        "ip",
        "work",
        b"",
        b"0\0default=True type=str "
    );

    // Global properties.
    check!(
        d,
        "admin.property.Get",
        "default_template",
        "dom0",
        b"",
        b"0\0default=True type=vm "
    );
    check!(d, "admin.property.Set", "default_template", "dom0", b"work", &exc("QubesPropertyValueError", "Invalid value 'work' for property 'default_template' of 'Qubes': 'work' is a AppVM, not a TemplateVM"));
    check!(
        d,
        "admin.property.Set",
        "default_template",
        "dom0",
        b"tpl",
        b"0\0"
    );
    check!(
        d,
        "admin.property.Get",
        "default_template",
        "dom0",
        b"",
        b"0\0default=False type=vm tpl"
    );
    check!(
        d,
        "admin.property.Get",
        "default_guivm",
        "dom0",
        b"",
        b"0\0default=True type=vm dom0"
    );
    check!(
        d,
        "admin.property.GetDefault",
        "default_pool_root",
        "dom0",
        b"",
        b"0\0type=str default"
    );
    check!(
        d,
        "admin.property.Get",
        "default_template",
        "work",
        b"",
        &exc("ProtocolError", "expected destination to be AdminVM")
    );
    check!(
        d,
        "admin.property.Reset",
        "default_template",
        "dom0",
        b"",
        b"0\0"
    );
    let glist = d.ok("admin.property.List", "", "dom0", b"");
    assert!(glist.starts_with("check_updates_vm\nclockvm\n"), "{glist}");
    let gall = d.ok("admin.property.GetAll", "", "dom0", b"");
    assert!(
        gall.contains("default_virt_mode default=False type=str ns\n"),
        "{gall}"
    );

    // List and GetAll: sorted, escaped.
    let list = d.ok("admin.vm.property.List", "", "work", b"");
    let names: Vec<&str> = list.lines().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(
        names.contains(&"template") && !names.contains(&"dispid") && names.contains(&"virt_mode")
    );
    check!(
        d,
        "admin.vm.property.Set",
        "kernelopts",
        "work",
        br"a\b",
        b"0\0"
    );
    let all = d.ok("admin.vm.property.GetAll", "", "work", b"");
    assert_eq!(all.lines().count(), names.len());
    assert!(
        all.contains("kernelopts default=False type=str a\\\\b\n"),
        "{all}"
    );
    assert!(all.contains("label default=False type=label green\n"));
    assert!(all.contains("netvm default=False type=vm \n"));
    let dom0_list = d.ok("admin.vm.property.List", "", "dom0", b"");
    assert!(!dom0_list.contains("netvm") && dom0_list.contains("label"));
}

#[test]
fn features_tags_labels_notes() {
    let d = Daemon::start();
    setup(&d);
    check!(d, "admin.vm.feature.List", "", "work", b"", b"0\0");
    check!(d, "admin.vm.feature.Set", "x", "work", b"1", b"0\0");
    check!(d, "admin.vm.feature.Set", "empty", "work", b"", b"0\0");
    check!(d, "admin.vm.feature.Get", "x", "work", b"", b"0\x001");
    check!(d, "admin.vm.feature.Get", "empty", "work", b"", b"0\0");
    check!(
        d,
        "admin.vm.feature.List",
        "",
        "work",
        b"",
        b"0\0empty\nx\n"
    );
    check!(
        d,
        "admin.vm.feature.Get",
        "y",
        "work",
        b"",
        &exc(
            "QubesFeatureNotFoundError",
            "Feature not set for domain work: y"
        )
    );
    check!(d, "admin.vm.feature.Set", "bad/name", "work", b"1", &exc("ProtocolError", "invalid feature name 'bad/name': name may contain only letters, digits, '_', '.' and '-'"));
    check!(
        d,
        "admin.vm.feature.Set",
        "x",
        "work",
        b"a\nb",
        &exc("ProtocolError", "feature value must be printable ASCII")
    );
    check!(
        d,
        "admin.vm.feature.Set",
        "t1",
        "tpl",
        b"from-template",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.feature.Set",
        "a1",
        "dom0",
        b"from-dom0",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.feature.CheckWithTemplate",
        "t1",
        "work",
        b"",
        b"0\0from-template"
    );
    check!(
        d,
        "admin.vm.feature.CheckWithTemplate",
        "a1",
        "work",
        b"",
        &exc(
            "QubesFeatureNotFoundError",
            "Feature not set for domain work: a1"
        )
    );
    check!(
        d,
        "admin.vm.feature.CheckWithAdminVM",
        "a1",
        "work",
        b"",
        b"0\0from-dom0"
    );
    check!(
        d,
        "admin.vm.feature.CheckWithTemplateAndAdminVM",
        "a1",
        "work",
        b"",
        b"0\0from-dom0"
    );
    check!(
        d,
        "admin.vm.feature.CheckWithTemplateAndAdminVM",
        "t1",
        "work",
        b"",
        b"0\0from-template"
    );
    check!(
        d,
        "admin.vm.feature.CheckWithTemplateAndAdminVM",
        "x",
        "work",
        b"",
        b"0\x001"
    );
    d.ok(
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=net label=red",
    );
    d.ok("admin.vm.property.Set", "provides_network", "net", b"True");
    d.ok("admin.vm.property.Set", "netvm", "work", b"net");
    d.ok("admin.vm.feature.Set", "n1", "net", b"from-net");
    check!(
        d,
        "admin.vm.feature.CheckWithNetvm",
        "n1",
        "work",
        b"",
        b"0\0from-net"
    );
    check!(
        d,
        "admin.vm.feature.CheckWithNetvm",
        "t1",
        "work",
        b"",
        &exc(
            "QubesFeatureNotFoundError",
            "Feature not set for domain work: t1"
        )
    );
    check!(d, "admin.vm.feature.Remove", "x", "work", b"", b"0\0");
    check!(
        d,
        "admin.vm.feature.Remove",
        "x",
        "work",
        b"",
        &exc(
            "QubesFeatureNotFoundError",
            "Feature not set for domain work: x"
        )
    );

    check!(d, "admin.vm.tag.Set", "t", "work", b"", b"0\0");
    check!(d, "admin.vm.tag.Get", "t", "work", b"", b"0\x001");
    check!(d, "admin.vm.tag.Get", "u", "work", b"", b"0\x000");
    check!(
        d,
        "admin.vm.tag.List",
        "",
        "work",
        b"",
        b"0\0created-by-dom0\nt\n"
    );
    check!(
        d,
        "admin.vm.tag.Remove",
        "u",
        "work",
        b"",
        &exc("QubesTagNotFoundError", "Tag not set for domain work: u")
    );
    check!(d, "admin.vm.tag.Remove", "t", "work", b"", b"0\0");
    check!(
        d,
        "admin.vm.tag.Set",
        "",
        "work",
        b"",
        &exc("ProtocolError", "expected an argument")
    );

    check!(d, "admin.label.Create", "mine", "dom0", b"0x12AB56", b"0\0");
    check!(d, "admin.label.Index", "mine", "dom0", b"", b"0\x009");
    check!(d, "admin.label.Get", "mine", "dom0", b"", b"0\x000x12ab56");
    check!(
        d,
        "admin.label.Create",
        "mine",
        "dom0",
        b"0x123456",
        &exc("QubesValueError", "label 'mine' already exists")
    );
    check!(
        d,
        "admin.label.Create",
        "other",
        "dom0",
        b"red",
        &exc("ProtocolError", "invalid colour 'red': expected 0xRRGGBB")
    );
    check!(
        d,
        "admin.label.Create",
        "other",
        "dom0",
        b"",
        &exc("ProtocolError", "expected payload")
    );
    d.ok("admin.vm.property.Set", "label", "work", b"mine");
    check!(
        d,
        "admin.label.Remove",
        "mine",
        "dom0",
        b"",
        &exc(
            "QubesLabelInUseError",
            "Label is still in use: 'mine' (by work); relabel those qubes first"
        )
    );
    check!(
        d,
        "admin.label.Remove",
        "red",
        "dom0",
        b"",
        &exc("PermissionDenied", "Cannot remove built-in label 'red'")
    );
    d.ok("admin.vm.property.Set", "label", "work", b"red");
    check!(d, "admin.label.Remove", "mine", "dom0", b"", b"0\0");
    check!(
        d,
        "admin.label.Remove",
        "mine",
        "dom0",
        b"",
        &exc("QubesLabelNotFoundError", "Label does not exist: mine")
    );

    check!(d, "admin.vm.notes.Get", "", "work", b"", b"0\0");
    check!(
        d,
        "admin.vm.notes.Set",
        "",
        "work",
        "Bank PIN is not here.\n\x01\u{e9}\t".as_bytes(),
        b"0\0"
    );
    check!(
        d,
        "admin.vm.notes.Get",
        "",
        "work",
        b"",
        "0\0Bank PIN is not here.\n_\u{e9}\t".as_bytes()
    );
    check!(d, "admin.vm.notes.Set", "", "work", b"", b"0\0");
    check!(d, "admin.vm.notes.Get", "", "work", b"", b"0\0");
}

#[test]
fn remove_and_references() {
    let d = Daemon::start();
    setup(&d);
    d.ok("admin.property.Set", "default_template", "dom0", b"tpl");
    check!(
        d,
        "admin.vm.Remove",
        "",
        "tpl",
        b"",
        &exc("QubesVMInUseError", "Domain is in use: 'tpl'; it is the global default_template, template of 'work'. Change those first (bulkhead prefs / global-prefs)")
    );
    check!(
        d,
        "admin.vm.Remove",
        "",
        "dom0",
        b"",
        &exc("ProtocolError", "expected destination to not be AdminVM")
    );
    check!(d, "admin.vm.Remove", "", "work", b"", b"0\0");
    check!(
        d,
        "admin.vm.Remove",
        "",
        "work",
        b"",
        &exc("QubesVMNotFoundError", "No such domain: 'work'")
    );
    d.ok("admin.property.Reset", "default_template", "dom0", b"");
    check!(d, "admin.vm.Remove", "", "tpl", b"", b"0\0");
    check!(
        d,
        "admin.vm.List",
        "",
        "dom0",
        b"",
        b"0\0dom0 class=AdminVM state=Running uuid=00000000-0000-0000-0000-000000000000\n"
    );
}

#[test]
fn protocol_and_framing_errors() {
    let d = Daemon::start();
    check!(
        d,
        "admin.nope",
        "",
        "dom0",
        b"",
        &exc("ProtocolError", "no such method: 'admin.nope'")
    );
    check!(
        d,
        "admin.vm.List",
        "foo",
        "dom0",
        b"",
        &exc("ProtocolError", "unexpected argument")
    );
    check!(d, "admin.vm.List", "", "bad name", b"", &exc("QubesValueError", "VM name must start with a letter and contain only letters, digits, '_', '.' and '-': 'bad name'"));
    // Unknown source is refused before anything else.
    let r = d.call(b"admin.vm.List+ ghost name dom0\0");
    assert_eq!(
        s(&r),
        s(&exc("QubesVMNotFoundError", "No such domain: 'ghost'"))
    );
    // keyword adminvm is dom0.
    let r = d.call(b"admin.vm.List+ dom0 keyword adminvm\0");
    assert!(r.starts_with(b"0\0dom0 class=AdminVM"));
    // Framing errors: connection aborted with no reply.
    for bad in [
        &b"admin.vm.List+ dom0 name dom0"[..],
        b"admin.vm.List+ dom0 name\0",
        b"admin.vm.List+ dom0 uuid dom0\0",
        b"admin.vm.List+ dom0 keyword dom0\0",
        "admin.vm.List+ d\u{f6}m0 name dom0\0".as_bytes(),
    ] {
        assert_eq!(d.call(bad), b"", "{:?}", s(bad));
    }
    let mut big = b"admin.vm.notes.Set+ dom0 name dom0\0".to_vec();
    big.resize(65537, b'x');
    assert_eq!(d.call(&big), b"");
    big.truncate(65536);
    assert_eq!(d.call(&big), b"0\0");
    // Still serving.
    assert!(d
        .call(b"admin.vm.List+ dom0 name dom0\0")
        .starts_with(b"0\0"));
}

fn read_event(
    sock: &mut UnixStream,
    buf: &mut bulkhead_proto::admin::EventStream,
) -> bulkhead_proto::admin::Event {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(ev) = buf.next_event().unwrap() {
            return ev;
        }
        let n = sock.read(&mut chunk).unwrap();
        assert!(n > 0, "event stream closed");
        buf.feed(&chunk[..n]);
    }
}

#[test]
fn events_stream_with_qubes_keys() {
    let d = Daemon::start();
    setup(&d);
    let open = |dest: &str| {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(format!("admin.Events+ dom0 name {dest}\0").as_bytes())
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut first = [0u8; 27];
        s.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"1\0\0connection-established\0\0");
        s
    };
    let mut all = open("dom0");
    let mut only_work = open("work");
    d.ok("admin.vm.property.Set", "memory", "work", b"800");
    d.ok("admin.vm.property.Set", "memory", "tpl", b"900");
    d.ok("admin.vm.property.Reset", "memory", "work", b"");
    d.ok("admin.property.Set", "default_template", "dom0", b"tpl");
    d.ok("admin.vm.feature.Set", "f", "work", b"v1");
    d.ok("admin.vm.feature.Set", "f", "work", b"v2");
    d.ok("admin.vm.feature.Remove", "f", "work", b"");
    d.ok("admin.vm.tag.Set", "t", "work", b"");
    d.ok("admin.vm.tag.Remove", "t", "work", b"");
    d.ok(
        "admin.vm.Create.AppVM",
        "tpl",
        "dom0",
        b"name=other label=red",
    );
    d.ok("admin.vm.Remove", "", "other", b"");
    // Raw bytes of the first event, then decoded events.
    let want = b"1\0work\0property-set:memory\0name\0memory\0newvalue\x00800\0oldvalue\x00400\0\0";
    let mut raw = vec![0u8; want.len()];
    all.read_exact(&mut raw).unwrap();
    assert_eq!(s(&raw), s(want));
    let mut p = bulkhead_proto::admin::EventStream::new();
    let mut got = Vec::new();
    for _ in 0..10 {
        let ev = read_event(&mut all, &mut p);
        let kw: Vec<String> = ev.kwargs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        got.push(format!("{}|{}|{}", ev.subject, ev.event, kw.join(",")));
    }
    assert_eq!(
        got,
        [
            "tpl|property-set:memory|name=memory,newvalue=900,oldvalue=400",
            "work|property-reset:memory|name=memory,oldvalue=800",
            "|property-set:default_template|name=default_template,newvalue=tpl,oldvalue=None",
            "work|feature-set:f|feature=f,value=v1",
            "work|feature-set:f|feature=f,value=v2,oldvalue=v1",
            "work|feature-delete:f|feature=f",
            "work|tag-add:t|tag=t",
            "work|tag-delete:t|tag=t",
            "|domain-add|vm=other",
            "|domain-delete|vm=other",
        ]
    );
    // The per-qube stream saw only work's events.
    let mut p = bulkhead_proto::admin::EventStream::new();
    let subjects: Vec<String> = (0..7)
        .map(|_| read_event(&mut only_work, &mut p).subject)
        .collect();
    assert!(subjects.iter().all(|s| s == "work"), "{subjects:?}");
}

#[test]
fn volume_pool_and_lifecycle_replies() {
    let d = Daemon::start();
    setup(&d);
    check!(
        d,
        "admin.pool.List",
        "",
        "dom0",
        b"",
        b"0\0default\nlinux-kernel\n"
    );
    check!(
        d,
        "admin.pool.ListDrivers",
        "",
        "dom0",
        b"",
        b"0\0file-reflink dir_path revisions_to_keep ephemeral_volatile\nlinux-kernel dir_path\n"
    );
    let info = d.ok("admin.pool.Info", "default", "dom0", b"");
    let keys: Vec<&str> = info.lines().filter_map(|l| l.split('=').next()).collect();
    assert_eq!(
        keys,
        [
            "dir_path",
            "driver",
            "name",
            "reflink",
            "revisions_to_keep",
            "size",
            "usage"
        ]
    );
    check!(
        d,
        "admin.vm.volume.List",
        "",
        "work",
        b"",
        b"0\0root\nprivate\nvolatile\n"
    );
    let v = d.ok("admin.vm.volume.Info", "root", "work", b"");
    for want in [
        "pool=default\n",
        "vid=appvms/work/root\n",
        "size=10737418240\n",
        "rw=True\n",
        "source=vm-templates/tpl/root\n",
        "save_on_stop=False\n",
        "snap_on_start=True\n",
        "revisions_to_keep=1\n",
        "ephemeral=False\n",
        "is_outdated=False\n",
    ] {
        assert!(v.contains(want), "missing {want:?} in {v}");
    }
    let v = d.ok("admin.vm.volume.Info", "private", "work", b"");
    assert!(
        v.contains("save_on_stop=True\nsnap_on_start=False\n"),
        "{v}"
    );
    assert!(v.contains("source=\n"), "{v}");
    check!(
        d,
        "admin.vm.volume.ListSnapshots",
        "private",
        "work",
        b"",
        b"0\0"
    );
    check!(
        d,
        "admin.vm.Shutdown",
        "",
        "work",
        b"",
        &exc("QubesVMNotStartedError", "Domain is powered off: 'work'")
    );
    check!(
        d,
        "admin.vm.Kill",
        "",
        "work",
        b"",
        &exc("QubesVMNotStartedError", "Domain is powered off: 'work'")
    );
    check!(
        d,
        "admin.vm.Shutdown",
        "now",
        "work",
        b"",
        &exc("ProtocolError", "invalid shutdown option 'now'")
    );
    check!(
        d,
        "admin.vm.Start",
        "",
        "dom0",
        b"",
        &exc("ProtocolError", "expected destination to not be AdminVM")
    );
    check!(
        d,
        "admin.vm.volume.Info",
        "swap",
        "work",
        b"",
        &exc(
            "QubesValueError",
            "no volume 'swap' (volumes: root, private, volatile, kernel)"
        )
    );
    // Settings persist in the state.
    d.ok(
        "admin.vm.volume.Set.revisions_to_keep",
        "private",
        "work",
        b"3",
    );
    assert!(d
        .ok("admin.vm.volume.Info", "private", "work", b"")
        .contains("revisions_to_keep=3\n"));
    check!(
        d,
        "admin.vm.volume.Set.revisions_to_keep",
        "private",
        "work",
        b"-2",
        &exc(
            "QubesValueError",
            "invalid revisions_to_keep -2: expected -1 to 100"
        )
    );
    // Only dom0 may import.
    check!(
        d,
        "admin.vm.volume.CloneTo",
        "private",
        "work",
        b"not-a-token",
        &exc("QubesValueError", "invalid or already used clone token")
    );
}
