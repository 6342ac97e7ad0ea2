//! Policy decision time with 10,000 rules. Prints; asserts nothing.
//!
//!     cargo bench -p bulkhead-policy --bench decide

use std::path::Path;
use std::time::Instant;

use bulkhead_policy::{parse, Decision, Domain, Policy, Request, System};

struct NoFiles;
impl bulkhead_policy::Files for NoFiles {
    fn read(&self, p: &Path) -> std::io::Result<String> {
        Err(std::io::Error::other(format!("no {}", p.display())))
    }
    fn list(&self, _: &Path) -> std::io::Result<Vec<String>> {
        Ok(vec![])
    }
}

fn system() -> System {
    let mut sys = System::default();
    let mut add = |name: &str, class: &str, tags: &[&str]| {
        sys.domains.insert(
            name.into(),
            Domain {
                name: name.into(),
                class: class.into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                running: true,
                ..Default::default()
            },
        );
    };
    add("dom0", "AdminVM", &[]);
    add("work", "AppVM", &["office"]);
    add("vault", "AppVM", &["secret"]);
    for i in 0..200 {
        add(&format!("q{i}"), "AppVM", &[]);
    }
    sys
}

fn time(policy: &Policy, sys: &System, req: &Request<'_>, label: &str) {
    let n = 200_000;
    let expect = policy.decide(sys, req);
    assert!(matches!(expect, Decision::Allow { .. }), "{expect:?}");
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(policy.decide(sys, std::hint::black_box(req)));
    }
    let per = t.elapsed() / n;
    println!("{label:<62} {per:?} per decision");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sys = system();
    // 10,000 rules over 1,000 services, tag and type tokens mixed in.
    let mut text = String::new();
    for i in 0..10_000 {
        let svc = format!("svc.S{}", i % 1000);
        let line = match i % 4 {
            0 => format!("{svc} * @tag:office vault allow\n"),
            1 => format!("{svc} +arg{i} work @anyvm deny\n"),
            2 => format!("{svc} * @type:AppVM q{} allow\n", i % 200),
            _ => format!("{svc} * @anyvm @dispvm deny\n"),
        };
        text.push_str(&line);
    }
    text.push_str("* * work vault allow\n");
    let t = Instant::now();
    let policy = Policy::new(parse(Path::new("bench.policy"), &text, &NoFiles).unwrap());
    println!("parse + index 10,001 rules: {:?}", t.elapsed());
    let req = Request {
        service: "svc.S502",
        argument: "+x",
        source: "work",
        target: "q102",
    };
    time(
        &policy,
        &sys,
        &req,
        "10,000 rules / 1,000 services, first rule of the service",
    );
    let req = Request {
        service: "svc.S501",
        argument: "+x",
        source: "work",
        target: "vault",
    };
    time(
        &policy,
        &sys,
        &req,
        "10,000 rules, 10 service rules miss, the final '*' matches",
    );
    let req = Request {
        service: "svc.none",
        argument: "+",
        source: "work",
        target: "vault",
    };
    time(
        &policy,
        &sys,
        &req,
        "10,000 rules, only the final '*' rule matches",
    );
    // Worst case: every rule is for the same service and the last one matches.
    let mut worst = String::new();
    for i in 0..10_000 {
        worst.push_str(&format!("svc.One +a{i} @tag:office vault allow\n"));
    }
    worst.push_str("svc.One * work vault allow\n");
    let policy = Policy::new(parse(Path::new("worst.policy"), &worst, &NoFiles).unwrap());
    let req = Request {
        service: "svc.One",
        argument: "+",
        source: "work",
        target: "vault",
    };
    time(
        &policy,
        &sys,
        &req,
        "worst case: 10,001 rules for one service, last matches",
    );
}
