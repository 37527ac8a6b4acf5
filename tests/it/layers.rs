//! The house has one-way stairs (see the top of `src/lib.rs`): a module may use the layers below
//! its own, never one above, and the modules of one layer use each other without going round in a
//! circle. This reads every `use crate::…` / `crate::…` path and every `super::` in `src/` and
//! checks both rules, so a dependency pointing the wrong way fails the build's tests, not a review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom; a module may use its own layer and those before it.
const LAYERS: [(&str, &[&str]); 7] = [
    ("base", &["base"]),
    ("store", &["store"]),
    ("config", &["config"]),
    ("domain", &["domain"]),
    ("web", &["web"]),
    ("server", &["server"]),
    ("entry", &["cli", "demo", "main", "lib"]),
];

fn layer_of(module: &str) -> usize {
    let top = module.split("::").next().unwrap();
    LAYERS.iter().position(|(_, tops)| tops.contains(&top)).unwrap_or_else(|| panic!("{module} is in no layer"))
}

/// Every source file as a module path (`web::portal::login`), with its text minus its tests.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.file_name().unwrap() == "tests.rs" {
                continue;
            }
            let relative: PathBuf = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Test code may reach anywhere (a test of the domain may use an in-memory store).
            let text = without_test_items(&text);
            // Comments name other modules without depending on them.
            let text: String = text
                .lines()
                .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
                .collect::<Vec<_>>()
                .join("\n");
            found.insert(parts.join("::"), text);
        }
    }
    found
}

/// `text` without its `#[cfg(test)]` items: each from its attribute to the end of the item (the
/// `;` of a one-line item, or the brace that closes its body).
fn without_test_items(text: &str) -> String {
    let mut kept = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => {
                    end = i + 1;
                    break;
                }
                '}' => depth = depth.saturating_sub(1),
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    kept.push_str(rest);
    kept
}

/// The module a path names: the longest prefix of it that is a module.
fn resolve(path: &str, modules: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|candidate| modules.contains_key(candidate))
}

/// The paths after `crate::` in `text`, with `crate::a::{b, c::d}` expanded.
fn crate_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{')).unwrap_or(rest.len());
        let head = &rest[..end];
        if let Some(prefix) = head.strip_suffix('{').or_else(|| head.split_once("::{").map(|(p, _)| p)) {
            let prefix = prefix.trim_end_matches("::");
            let close = rest.find('}').unwrap_or(rest.len());
            let inner = &rest[rest.find('{').unwrap() + 1..close];
            for item in inner.split(',') {
                let item = item.trim().split(" as ").next().unwrap().trim();
                if !item.is_empty() && item != "self" {
                    paths.push(format!("{prefix}::{item}"));
                } else if item == "self" {
                    paths.push(prefix.to_string());
                }
            }
        } else {
            paths.push(head.trim_end_matches(':').to_string());
        }
    }
    paths
}

/// Edges `from → to` between modules, from `crate::` paths, `super::` paths, and a parent's use
/// of its own child modules.
fn edges(modules: &BTreeMap<String, String>) -> BTreeSet<(String, String)> {
    let mut edges = BTreeSet::new();
    for (module, text) in modules {
        let mut add = |target: Option<String>| {
            if let Some(target) = target.filter(|t| t != module) {
                edges.insert((module.clone(), target));
            }
        };
        for path in crate_paths(text) {
            add(resolve(&path, modules));
        }
        let parent = module.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string());
        for piece in text.split("super::").skip(1) {
            let name: String = piece.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let sibling = if parent.is_empty() { name.clone() } else { format!("{parent}::{name}") };
            add(Some(if modules.contains_key(&sibling) { sibling } else { parent.clone() }));
        }
        for (child, _) in modules.range(format!("{module}::")..) {
            let Some(name) = child.strip_prefix(&format!("{module}::")) else { break };
            if !name.contains("::") && text.contains(&format!("{name}::")) {
                add(Some(child.clone()));
            }
        }
    }
    edges
}

#[test]
fn dependencies_point_down_and_never_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(modules.len() > 40, "read only {} modules", modules.len());
    let edges = edges(&modules);
    let upward: Vec<String> = edges
        .iter()
        .filter(|(from, to)| layer_of(to) > layer_of(from))
        .map(|(from, to)| format!("{from} ({}) uses {to} ({})", LAYERS[layer_of(from)].0, LAYERS[layer_of(to)].0))
        .collect();
    assert!(upward.is_empty(), "dependencies pointing up:\n{}", upward.join("\n"));

    // Circles: depth-first search for a back edge.
    let graph: BTreeMap<&str, Vec<&str>> = edges.iter().fold(BTreeMap::new(), |mut g, (from, to)| {
        g.entry(from.as_str()).or_default().push(to.as_str());
        g
    });
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|n| *n == node) {
            circles.push(format!("{} → {node}", path[at..].join(" → ")));
            return;
        }
        if !done.insert(node) {
            return;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done, circles);
        }
        path.pop();
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for module in modules.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "dependencies in a circle:\n{}", circles.join("\n"));
}
