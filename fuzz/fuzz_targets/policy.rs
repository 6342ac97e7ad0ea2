//! Fuzzes the policy parser (including the old per-service syntax through an
//! in-memory include) and the evaluator with requests derived from the input.
#![no_main]

use std::path::{Path, PathBuf};

use bulkhead_policy::{parse, Domain, Files, Policy, Request, System};
use libfuzzer_sys::fuzz_target;

struct OneFile(String);

impl Files for OneFile {
    fn read(&self, p: &Path) -> std::io::Result<String> {
        if p == Path::new("/p/inc") {
            Ok(self.0.clone())
        } else {
            Err(std::io::Error::other("no such file"))
        }
    }
    fn list(&self, _: &Path) -> std::io::Result<Vec<String>> {
        Ok(vec![])
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (policy_text, req_text) = text.split_once('\u{0}').unwrap_or((&text, "svc + work vault"));
    let files = OneFile(policy_text.to_string());
    let mut all = policy_text.to_string();
    all.push_str("\n!include-service svc * inc\n");
    let Ok(rules) = parse(&PathBuf::from("/p/main.policy"), &all, &files) else { return };
    let p = Policy::new(rules);
    let mut sys = System::default();
    for (n, c) in [("dom0", "AdminVM"), ("work", "AppVM"), ("vault", "AppVM"), ("dvm", "AppVM")] {
        sys.domains.insert(
            n.into(),
            Domain { name: n.into(), class: c.into(), template_for_dispvms: n == "dvm", default_dispvm: Some("dvm".into()), ..Default::default() },
        );
    }
    let f: Vec<&str> = req_text.split_whitespace().collect();
    if f.len() >= 4 {
        let _ = p.decide(&sys, &Request { service: f[0], argument: f[1], source: f[2], target: f[3] });
    }
});
