//! The house's rules, checked on the source tree: `actors/` is in floors (a module
//! uses only modules declared before it in `actors/mod.rs`), `src/` has no cycle
//! between its modules, and `src/` is pure — it opens no file, reads no clock and
//! touches no runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` (recursively).
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without its `#[cfg(test)] mod tests` (tests may use anything).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source");
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The names that follow `prefix` in `text` (`super::router` → `router`).
fn referenced(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn actors_are_in_floors() {
    let mod_rs = std::fs::read_to_string(root().join("actors/mod.rs")).expect("mod.rs");
    let order: Vec<String> = mod_rs
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect();
    assert!(order.len() > 10, "modules declared: {order:?}");
    let floor = |m: &str| order.iter().position(|o| o == m);
    let mut violations = Vec::new();
    for path in sources(&root().join("actors")) {
        let rel = path
            .strip_prefix(root().join("actors"))
            .expect("under actors");
        // A module is its file, or its directory for the files inside one.
        let module = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|c| c.trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        if module == "mod" {
            continue;
        }
        let Some(own) = floor(&module) else {
            violations.push(format!(
                "{} is not declared in actors/mod.rs",
                rel.display()
            ));
            continue;
        };
        let text = code(&path);
        // From inside a subdirectory, `super::` is the module itself.
        let prefix = if rel.components().count() > 1 {
            "super::super::"
        } else {
            "super::"
        };
        for used in referenced(&text, prefix) {
            match floor(&used) {
                Some(f) if f < own => {}
                Some(_) => violations.push(format!(
                    "actors/{} uses {used}, which is not on a floor below it",
                    rel.display()
                )),
                None => {}
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn src_has_no_module_cycle() {
    // Top-level modules of the library (actors/ is checked above).
    let src = root().join("src");
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in sources(&src) {
        let rel = path.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|c| c.trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        if top == "lib" || top == "main" {
            continue;
        }
        let used = referenced(&code(&path), "crate::");
        let entry = deps.entry(top.clone()).or_default();
        for u in used {
            if u != top && u != "actors" {
                entry.insert(u);
            }
        }
    }
    let modules: Vec<String> = deps.keys().cloned().collect();
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in &modules {
        let mut path = Vec::new();
        if let Some(cycle) = visit(m, &deps, &mut path, &mut done) {
            panic!("a cycle in src/: {}", cycle.join(" -> "));
        }
    }
    // The library never reaches into the actors from src/ (main.rs may).
    for (m, used) in &deps {
        assert!(!used.contains("actors"), "src/{m} uses the actors");
    }
}

#[test]
fn src_opens_no_file_reads_no_clock_and_touches_no_runtime() {
    let src = root().join("src");
    let forbidden = [
        "std::fs::",
        "File::open",
        "Instant::now()",
        "SystemTime::now()",
        "async_io",
        "async_net",
        "async_executor",
        "blocking::",
        "std::thread::",
        "std::net::TcpStream",
        "std::net::UdpSocket",
    ];
    let mut found = Vec::new();
    for path in sources(&src) {
        if path.ends_with("main.rs") {
            continue;
        }
        let text = code(&path);
        for f in forbidden {
            if text.contains(f) {
                found.push(format!(
                    "{}: {f}",
                    path.strip_prefix(root()).unwrap_or(&path).display()
                ));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn actors_reach_the_runtime_through_its_seam() {
    // Spawning, blocking work, timers, signals and the clock go through runtime.rs.
    let forbidden = [
        "blocking::unblock",
        "async_signal::",
        "Instant::now()",
        "SystemTime::now()",
        "async_io::",
        "async_net::",
        "async_executor::",
        "smol_hyper::",
        "std::thread::spawn",
    ];
    let mut found = Vec::new();
    for path in sources(&root().join("actors")) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // The seam itself, the storage actor's own threads (redb is blocking: its
        // writer and journal are threads by design), and the benchmark client (a
        // program of its own, measuring with the wall clock).
        if name == "runtime.rs"
            || name == "storage.rs"
            || path.components().any(|c| c.as_os_str() == "bench")
        {
            continue;
        }
        let text = code(&path);
        for f in forbidden {
            if text.contains(f) {
                found.push(format!(
                    "{}: {f}",
                    path.strip_prefix(root()).unwrap_or(&path).display()
                ));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
