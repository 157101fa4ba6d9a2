//! The engine's modules import each other only downwards, in the order its
//! module documentation lists them: this reads the sources and fails on any
//! import of a module listed later (which is what any cycle needs).

use std::collections::HashMap;
use std::path::Path;

/// Module names in the order `mod.rs`'s documentation lists them.
fn documented_order(mod_rs: &str) -> Vec<String> {
    mod_rs
        .lines()
        .filter_map(|line| line.strip_prefix("//! - `"))
        .filter_map(|rest| rest.split_once('`').map(|(name, _)| name.to_string()))
        .collect()
}

/// The engine modules a source file refers to, through `super::` or
/// `crate::engine::` paths, outside its tests.
fn references(source: &str, modules: &[String]) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for prefix in ["super::", "crate::engine::"] {
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
                None => vec![rest],
            };
            for name in names {
                let name: String = name
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) {
                    found.push(name);
                }
            }
        }
    }
    found
}

#[test]
fn engine_modules_import_only_modules_listed_before_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mod_rs = std::fs::read_to_string(dir.join("mod.rs")).expect("engine/mod.rs");
    let order = documented_order(&mod_rs);
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut violations = Vec::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("engine dir") {
        let path = entry.expect("dir entry").path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if name == "mod" || name.ends_with("_tests") {
            continue;
        }
        let Some(&own) = rank.get(name) else {
            violations.push(format!("{name}.rs is not listed in engine/mod.rs's layers"));
            continue;
        };
        seen += 1;
        let source = std::fs::read_to_string(&path).expect("module source");
        for used in references(&source, &order) {
            if rank[used.as_str()] >= own && used != name {
                violations.push(format!("{name} uses {used}, which is listed after it"));
            }
        }
    }
    assert!(seen >= 10, "found only {seen} engine modules");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_check_sees_every_form_of_import() {
    let modules: Vec<String> = ["task", "fetcher", "plan", "landing"]
        .map(String::from)
        .to_vec();
    let source = "use super::task::Task;\nuse super::{fetcher, plan::Order};\n\
                  fn f() { super::landing::store(); }\n// super::plan in a comment\n\
                  #[cfg(test)]\nmod tests { use super::plan; }";
    assert_eq!(
        references(source, &modules),
        ["task", "fetcher", "plan", "landing"]
    );
}
