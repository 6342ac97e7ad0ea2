//! Parser and evaluator tests on in-memory files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::*;

#[derive(Default)]
struct Mem(HashMap<PathBuf, String>);

impl Files for Mem {
    fn read(&self, p: &Path) -> std::io::Result<String> {
        self.0
            .get(p)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "missing"))
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let v: Vec<String> = self
            .0
            .keys()
            .filter(|k| k.parent() == Some(dir))
            .map(|k| k.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        if v.is_empty() {
            Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no dir"))
        } else {
            Ok(v)
        }
    }
}

fn sys() -> System {
    let mut s = System::default();
    let mut add = |name: &str, class: &str, tags: &[&str], f: &dyn Fn(&mut Domain)| {
        let mut d = Domain {
            name: name.into(),
            class: class.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            uuid: format!("00000000-0000-0000-0000-{:012}", s.domains.len()),
            running: true,
            ..Default::default()
        };
        f(&mut d);
        s.domains.insert(name.into(), d);
    };
    add("dom0", "AdminVM", &[], &|_| {});
    add("work", "AppVM", &["office"], &|d| {
        d.default_dispvm = Some("work-dvm".into())
    });
    add("personal", "AppVM", &[], &|d| d.running = false);
    add("vault", "AppVM", &["secret"], &|_| {});
    add("anon", "AppVM", &["anon-vm"], &|_| {});
    add("work-dvm", "AppVM", &["dvm"], &|d| {
        d.template_for_dispvms = true
    });
    add("disp7", "DispVM", &[], &|d| {
        d.template = Some("work-dvm".into())
    });
    add("fedora", "TemplateVM", &[], &|_| {});
    s
}

fn policy(text: &str) -> Policy {
    Policy::new(parse(Path::new("/p/test.policy"), text, &Mem::default()).unwrap())
}

fn decide(p: &Policy, svc: &str, src: &str, tgt: &str) -> Decision {
    let (service, argument) = match svc.split_once('+') {
        Some((s, a)) => (s, format!("+{a}")),
        None => (svc, "+".to_string()),
    };
    p.decide(
        &sys(),
        &Request {
            service,
            argument: &argument,
            source: src,
            target: tgt,
        },
    )
}

fn allowed(d: &Decision) -> Option<&str> {
    match d {
        Decision::Allow { target, .. } => Some(target),
        _ => None,
    }
}

#[test]
fn syntax_errors_name_file_and_line() {
    let bad = [
        ("a + work vault allow\nx", 2, "expected SERVICE"),
        (
            "a + @default vault allow",
            1,
            "not allowed in the source column",
        ),
        ("a + work @default allow", 1, "needs target="),
        (
            "a + work vault allow notify=yes notify=no",
            1,
            "given twice",
        ),
        ("a + work vault permit", 1, "unknown action"),
        ("* + work vault allow", 1, "argument must be *"),
        ("a + work vault deny target=vault", 1, "does not take"),
        (
            "a + work vault allow target=@anyvm",
            1,
            "not allowed in target=",
        ),
        ("a + work vault allow autostart=maybe", 1, "yes or no"),
        ("a/b + work vault allow", 1, "invalid service"),
        ("!frobnicate", 1, "directive"),
    ];
    for (text, line, want) in bad {
        let e = parse(Path::new("/p/x.policy"), text, &Mem::default()).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line),
            ("/p/x.policy", line),
            "{text}: {e}"
        );
        assert!(e.message.contains(want), "{text}: {e}");
    }
}

#[test]
fn first_match_wins_and_no_match_denies() {
    let p = policy("qubes.Filecopy * work vault deny\nqubes.Filecopy * @anyvm @anyvm allow\n");
    assert!(
        matches!(decide(&p, "qubes.Filecopy", "work", "vault"), Decision::Deny { rule: Some(ref l), .. } if l.line == 1)
    );
    assert_eq!(
        allowed(&decide(&p, "qubes.Filecopy", "work", "personal")),
        Some("personal")
    );
    match decide(&p, "qubes.Other", "work", "vault") {
        Decision::Deny {
            reason, rule: None, ..
        } => assert_eq!(reason, "no matching rule found"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn arguments() {
    let p = policy("s +x work vault allow\ns + work personal allow\ns * work @anyvm deny\n");
    assert_eq!(allowed(&decide(&p, "s+x", "work", "vault")), Some("vault"));
    assert!(allowed(&decide(&p, "s+y", "work", "vault")).is_none());
    assert_eq!(
        allowed(&decide(&p, "s", "work", "personal")),
        Some("personal")
    );
}

#[test]
fn tokens() {
    let p = policy(
        "a * @anyvm @anyvm allow\n\
         b * * * allow target=vault\n\
         c * @tag:office @tag:secret allow\n\
         d * @type:AppVM @adminvm allow\n\
         e * @dispvm:work-dvm @adminvm allow\n\
         f * @anyvm @dispvm:@tag:dvm allow\n\
         g * uuid:00000000-0000-0000-0000-000000000001 vault allow\n",
    );
    assert_eq!(allowed(&decide(&p, "a", "work", "vault")), Some("vault"));
    assert!(
        allowed(&decide(&p, "a", "work", "dom0")).is_none(),
        "@anyvm excludes dom0"
    );
    assert!(
        allowed(&decide(&p, "a", "dom0", "vault")).is_none(),
        "@anyvm excludes dom0 as source"
    );
    assert_eq!(
        allowed(&decide(&p, "b", "dom0", "")),
        Some("vault"),
        "* matches dom0 and @default"
    );
    assert_eq!(allowed(&decide(&p, "c", "work", "vault")), Some("vault"));
    assert!(allowed(&decide(&p, "c", "personal", "vault")).is_none());
    assert_eq!(allowed(&decide(&p, "d", "work", "@adminvm")), Some("dom0"));
    assert!(allowed(&decide(&p, "d", "fedora", "dom0")).is_none());
    assert_eq!(allowed(&decide(&p, "e", "disp7", "dom0")), Some("dom0"));
    assert!(allowed(&decide(&p, "e", "work", "dom0")).is_none());
    assert_eq!(
        allowed(&decide(&p, "f", "vault", "@dispvm:work-dvm")),
        Some("@dispvm:work-dvm")
    );
    assert_eq!(
        allowed(&decide(&p, "g", "work", "vault")),
        Some("vault"),
        "uuid source"
    );
}

#[test]
fn dispvm_resolution() {
    let p = policy("o * @anyvm @dispvm allow\no * @anyvm @dispvm:work-dvm allow\nx * @anyvm @dispvm:work-dvm allow\n");
    assert_eq!(
        allowed(&decide(&p, "o", "work", "@dispvm")),
        Some("@dispvm:work-dvm")
    );
    // vault has no default_dispvm.
    assert!(
        matches!(decide(&p, "o", "vault", "@dispvm"), Decision::Deny { ref reason, .. } if reason.contains("no default_dispvm"))
    );
    // A @dispvm:X rule also matches a plain @dispvm request whose default is X.
    assert_eq!(
        allowed(&decide(&p, "x", "work", "@dispvm")),
        Some("@dispvm:work-dvm")
    );
    assert!(allowed(&decide(&p, "x", "vault", "@dispvm")).is_none());
}

#[test]
fn unknown_targets_cannot_be_probed() {
    let p = policy("s * work @default allow target=vault\ns * work @anyvm deny\n");
    // Both a missing qube and @default reach the @default rule.
    assert_eq!(
        allowed(&decide(&p, "s", "work", "no-such-qube")),
        Some("vault")
    );
    assert_eq!(allowed(&decide(&p, "s", "work", "")), Some("vault"));
    assert_eq!(
        allowed(&decide(
            &p,
            "s",
            "work",
            "uuid:99999999-0000-0000-0000-000000000000"
        )),
        Some("vault")
    );
}

#[test]
fn allow_refusals() {
    let p = policy("s * @anyvm @anyvm allow autostart=no\nt * @anyvm @anyvm allow\nu * @anyvm @default allow target=no-such\n");
    assert!(
        matches!(decide(&p, "s", "work", "personal"), Decision::Deny { ref reason, .. } if reason.contains("not running"))
    );
    assert_eq!(allowed(&decide(&p, "s", "work", "vault")), Some("vault"));
    assert!(
        matches!(decide(&p, "t", "work", "work"), Decision::Deny { ref reason, .. } if reason.contains("same"))
    );
    assert!(allowed(&decide(&p, "u", "work", "")).is_none());
}

#[test]
fn ask_offers_what_rules_allow() {
    let p = policy(
        "qubes.Filecopy * work vault deny\n\
         qubes.Filecopy * work @anyvm ask default_target=personal\n\
         qubes.Filecopy * vault @anyvm ask target=work user=user\n",
    );
    match decide(&p, "qubes.Filecopy", "work", "") {
        Decision::Ask {
            choices,
            default_target,
            ..
        } => {
            assert!(!choices.contains(&"vault".to_string()), "{choices:?}");
            assert!(!choices.contains(&"work".to_string()), "{choices:?}");
            assert!(!choices.contains(&"dom0".to_string()), "{choices:?}");
            assert!(
                choices.contains(&"personal".to_string())
                    && choices.contains(&"@dispvm:work-dvm".to_string()),
                "{choices:?}"
            );
            assert_eq!(default_target.as_deref(), Some("personal"));
        }
        d => panic!("{d:?}"),
    }
    match decide(&p, "qubes.Filecopy", "vault", "anon") {
        Decision::Ask { choices, user, .. } => {
            assert_eq!(choices, ["work"]);
            assert_eq!(user.as_deref(), Some("user"));
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn includes_and_directories() {
    let mut m = Mem::default();
    let put = |m: &mut Mem, p: &str, t: &str| {
        m.0.insert(PathBuf::from(p), t.to_string());
    };
    put(
        &mut m,
        "/etc/p/30-user.policy",
        "!include inc/extra\n!include-dir /etc/p/dir\n!include-service qubes.Old + old-svc\n",
    );
    put(&mut m, "/etc/p/inc/extra", "a * work vault allow\n");
    put(&mut m, "/etc/p/dir/10-x.policy", "b * work vault allow\n");
    put(&mut m, "/etc/p/dir/.hidden.policy", "!garbage\n");
    put(&mut m, "/etc/p/dir/notes.txt", "!garbage\n");
    put(
        &mut m,
        "/etc/p/old-svc",
        "# old format\n$anyvm $anyvm deny,notify=no\n",
    );
    put(
        &mut m,
        "/etc/p/90-default.policy",
        "* * @anyvm @anyvm deny\n",
    );
    put(&mut m, "/run/p/90-default.policy", "c * work vault allow\n");
    let p = load_dirs(&[PathBuf::from("/run/p"), PathBuf::from("/etc/p")], &m).unwrap();
    let services: Vec<Option<&str>> = p.rules().iter().map(|r| r.service.as_deref()).collect();
    // 30-user (with its includes in place), then 90-default from /run (which wins).
    assert_eq!(
        services,
        [Some("a"), Some("b"), Some("qubes.Old"), Some("c")]
    );
    assert_eq!(p.rules()[2].action, Action::Deny { notify: false });
    assert_eq!(p.rules()[2].location.file, "/etc/p/old-svc");

    put(&mut m, "/etc/p/Bad Name.policy", "");
    let e = load_dirs(&[PathBuf::from("/etc/p")], &m).unwrap_err();
    assert!(e.message.contains("invalid policy file name"), "{e}");

    let e = parse(
        Path::new("/x/y.policy"),
        "!include missing\n",
        &Mem::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("cannot read /x/missing"), "{e}");
    let mut loop_files = Mem::default();
    put(&mut loop_files, "/l/a", "!include a\n");
    let e = parse(Path::new("/l/a"), "!include a\n", &loop_files).unwrap_err();
    assert!(e.message.contains("nested deeper"), "{e}");
}

#[test]
fn index_keeps_file_order_between_specific_and_wildcard_rules() {
    let p = policy("* * work vault deny\ns * work vault allow\n");
    assert!(matches!(
        decide(&p, "s", "work", "vault"),
        Decision::Deny { .. }
    ));
    let p = policy("s * work vault allow\n* * work vault deny\n");
    assert_eq!(allowed(&decide(&p, "s", "work", "vault")), Some("vault"));
    // Exact-argument and any-argument rules of one service keep their order too.
    let p = policy("s * work vault deny\ns +x work vault allow\n");
    assert!(matches!(
        decide(&p, "s+x", "work", "vault"),
        Decision::Deny { .. }
    ));
    let p = policy("s +x work vault allow\ns * work vault deny\n");
    assert_eq!(allowed(&decide(&p, "s+x", "work", "vault")), Some("vault"));
}

proptest! {
    #[test]
    fn parser_and_evaluator_never_panic(
        text in "[ -~\n]{0,300}",
        svc in "[a-zA-Z.*]{0,12}",
        arg in "\\+[a-z]{0,4}",
        src in prop::sample::select(vec!["work", "dom0", "disp7", "ghost"]),
        tgt in "[@a-z:.0-9-]{0,20}",
    ) {
        if let Ok(rules) = parse(Path::new("/f.policy"), &text, &Mem::default()) {
            let p = Policy::new(rules);
            let _ = p.decide(&sys(), &Request { service: &svc, argument: &arg, source: src, target: &tgt });
        }
    }
}

#[test]
fn the_shipped_default_policy_parses_and_says_what_qubes_says() {
    let p = policy(include_str!(
        "../../../packaging/policy.d/90-default.policy"
    ));
    // Commands in other qubes: only disposables.
    assert!(allowed(&decide(&p, "qubes.VMShell", "work", "@dispvm")).is_some());
    assert!(matches!(
        decide(&p, "qubes.VMShell", "work", "vault"),
        Decision::Deny { .. }
    ));
    assert!(matches!(
        decide(&p, "qubes.Filecopy", "work", "vault"),
        Decision::Ask { .. }
    ));
    assert_eq!(
        allowed(&decide(&p, "qubes.GetDate", "work", "")),
        Some("dom0")
    );
    assert!(matches!(
        decide(&p, "qubes.GetDate", "anon", ""),
        Decision::Deny { .. }
    ));
    assert!(matches!(
        decide(&p, "qubes.ConnectTCP+22", "work", "vault"),
        Decision::Deny { .. }
    ));
    assert!(matches!(
        decide(&p, "unknown.Service", "work", "vault"),
        Decision::Deny { rule: None, .. }
    ));
}
