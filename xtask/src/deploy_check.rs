//! `cargo xtask deploy-check`: offline validation of `deploy/`, also run by
//! `cargo xtask test`.
//!
//! - The generated example files (the PrometheusRule and the dashboard
//!   ConfigMap in deploy/examples/monitoring) match their sources in
//!   deploy/monitoring (`--update` rewrites them).
//! - deploy/Containerfile copies only files that exist and calls only real
//!   xtask tasks (no container engine here, so it is never built in CI).
//! - Every `turnx_*` name in the alert rules, their tests and the dashboard
//!   is a metric family turnxd exports.
//! - `promtool check rules` and `promtool test rules` (Debian `prometheus`).
//! - Every kustomization (the base and each example) renders with
//!   `kubectl kustomize`, and every object validates against the
//!   Kubernetes API schemas of [`KUBERNETES_VERSION`] with
//!   `kubernetes-validate --strict` (PyPI, in a venv under target/tools).
//!   Prometheus Operator's kinds, which it has no schema for, validate
//!   against their CRDs' own schemas, vendored in deploy/schemas; and the
//!   API server's rules that no schema holds (Bidirectional propagation
//!   needs a privileged container, CAP_SYS_ADMIN forbids
//!   allowPrivilegeEscalation: false, a ConfigMap mounted with subPath is
//!   never updated) are checked too, as are the turnxd.toml keys.
//!
//! Kubernetes' own `kustomize` is not packaged in Debian bookworm, and its
//! `kubernetes-client` (1.20) embeds kustomize 2.0, too old for these
//! files; the kubectl this machine kind ships (with kustomize 5) renders
//! them. Without kubectl the base's files, which are whole objects, are
//! validated one by one and the overlays are reported as not rendered.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::CommandFactory;

use crate::{setup, util::describe};

/// Options of `cargo xtask deploy-check`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Rewrite the generated files in deploy/examples/monitoring from
    /// deploy/monitoring instead of failing when they differ.
    #[arg(long)]
    pub update: bool,
}

/// The Kubernetes release whose API schemas the manifests must satisfy:
/// the oldest minor the main managed offerings still run, and the first
/// with `securityContext.appArmorProfile`.
pub const KUBERNETES_VERSION: &str = "1.31";

/// Where the module that exports the metrics lives.
const METRICS_MODULE: &str = "relay-userspace/src/metrics.rs";

const ALERTS: &str = "deploy/monitoring/alerts.yaml";
const ALERTS_TEST: &str = "deploy/monitoring/alerts_test.yaml";
const DASHBOARD: &str = "deploy/monitoring/grafana-dashboard.json";
const PROMETHEUS_RULE: &str = "deploy/examples/monitoring/prometheusrule.yaml";
const DASHBOARD_CONFIGMAP: &str = "deploy/examples/monitoring/grafana-dashboard.yaml";
const CONTAINERFILE: &str = "deploy/Containerfile";
const SCHEMAS: &str = "deploy/schemas";
/// The built-in configuration: every key a turnxd.toml may hold.
const DEFAULT_CONFIG: &str = "relay-userspace/config/default.toml";

/// Runs every check and fails with the list of what to fix.
pub fn run(root: &Path, options: &Options) -> Result<()> {
    let mut problems = Vec::new();
    generated_files(root, options.update, &mut problems)?;
    containerfile(root, &mut problems)?;
    metric_names(root, &mut problems)?;

    let tools = setup::ensure_deploy_tools(root)?;
    promtool(root, &mut problems)?;
    let rendered = render(root, &mut problems)?;
    kubernetes_validate(root, &tools, &rendered, &mut problems)?;
    python_checks(root, &tools, &rendered, &mut problems)?;

    if !problems.is_empty() {
        bail!(
            "deploy-check found {} problem(s):\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        );
    }
    println!("deploy-check: deploy/ is valid");
    Ok(())
}

/// The text a generated file must have, from its source.
fn generated(root: &Path) -> Result<Vec<(&'static str, String)>> {
    let alerts = read(root, ALERTS)?;
    let dashboard = read(root, DASHBOARD)?;
    // The rule file's own header comment describes the file, not the
    // PrometheusRule; everything from `groups:` on goes under `spec:`.
    let groups_at = alerts
        .lines()
        .position(|line| line.starts_with("groups:"))
        .with_context(|| format!("{ALERTS}: no top-level `groups:`"))?;
    let mut rule = format!(
        "# Generated from {ALERTS} by `cargo xtask deploy-check --update`: edit that\n\
         # file, not this one.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: turnx\n  labels:\n    app.kubernetes.io/name: turnxd\n\
         \x20   # kube-prometheus-stack's Prometheus selects rules by its release\n\
         \x20   # label (ruleSelector); set yours.\n\
         \x20   release: kube-prometheus-stack\n\
         spec:\n"
    );
    for line in alerts.lines().skip(groups_at) {
        push_indented(&mut rule, line, 2);
    }
    let mut configmap = format!(
        "# Generated from {DASHBOARD} by `cargo xtask deploy-check --update`:\n\
         # edit that file, not this one. Grafana's dashboard sidecar loads\n\
         # ConfigMaps labelled grafana_dashboard=1.\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: turnx-grafana-dashboard\n  labels:\n    grafana_dashboard: \"1\"\n\
         data:\n  turnx.json: |\n"
    );
    for line in dashboard.lines() {
        push_indented(&mut configmap, line, 4);
    }
    Ok(vec![
        (PROMETHEUS_RULE, rule),
        (DASHBOARD_CONFIGMAP, configmap),
    ])
}

fn push_indented(out: &mut String, line: &str, indent: usize) {
    if !line.is_empty() {
        out.extend(std::iter::repeat_n(' ', indent));
        out.push_str(line);
    }
    out.push('\n');
}

fn generated_files(root: &Path, update: bool, problems: &mut Vec<String>) -> Result<()> {
    for (path, text) in generated(root)? {
        let current = fs::read_to_string(root.join(path)).unwrap_or_default();
        if current == text {
            continue;
        }
        if update {
            fs::write(root.join(path), text).with_context(|| format!("writing {path}"))?;
            println!("deploy-check: wrote {path}");
        } else {
            problems.push(format!(
                "{path} is not what its source makes; run `cargo xtask deploy-check --update`"
            ));
        }
    }
    Ok(())
}

/// One instruction of a Containerfile, continuation lines joined.
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        // Comments and blank lines end nothing, also inside a continued
        // instruction (the builders drop them).
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((number + 1, String::new()));
        let (body, continues) = match line.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (line, false),
        };
        joined.push_str(body);
        joined.push(' ');
        if continues {
            pending = Some((start, joined));
        } else if let Some((keyword, args)) = joined.trim().split_once(char::is_whitespace) {
            out.push(Instruction {
                line: start,
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            });
        }
    }
    out
}

/// COPY sources exist in the build context and are not ignored; files
/// copied from the builder are binaries this workspace builds; `cargo
/// xtask X` names a real task, and `build` runs before binaries are copied.
fn containerfile(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    let text = read(root, CONTAINERFILE)?;
    let ignore_path = format!("{CONTAINERFILE}.dockerignore");
    let ignored: Vec<String> = fs::read_to_string(root.join(&ignore_path))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.trim_start_matches("**/").trim_matches('/').to_owned())
        .collect();
    let tasks: Vec<String> = crate::Args::command()
        .get_subcommands()
        .map(|task| task.get_name().to_owned())
        .collect();
    let bins = read(root, "relay-userspace/Cargo.toml")?;
    let mut built = false;
    for instruction in instructions(&text) {
        let at = format!("{CONTAINERFILE}:{}", instruction.line);
        match instruction.keyword.as_str() {
            "RUN" => {
                let mut rest = instruction.args.as_str();
                while let Some(found) = rest.find("cargo xtask") {
                    rest = &rest[found + "cargo xtask".len()..];
                    let task = rest.split_whitespace().next().unwrap_or("");
                    if tasks.iter().any(|known| known == task) {
                        built |= task == "build";
                    } else {
                        problems.push(format!(
                            "{at}: `cargo xtask {task}` is not an xtask task (tasks: {})",
                            tasks.join(", ")
                        ));
                    }
                }
            }
            "COPY" | "ADD" => {
                let words: Vec<&str> = instruction.args.split_whitespace().collect();
                let from_stage = words.iter().any(|word| word.starts_with("--from"));
                let paths: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|word| !word.starts_with("--"))
                    .collect();
                let Some((_, sources)) = paths.split_last() else {
                    problems.push(format!(
                        "{at}: {} without source and destination",
                        instruction.keyword
                    ));
                    continue;
                };
                for source in sources {
                    if from_stage {
                        let bin = source.rsplit('/').next().unwrap_or("");
                        let declared = bins.contains(&format!("name = \"{bin}\""));
                        if !source.contains("target/release/") || !declared {
                            problems.push(format!(
                                "{at}: {source} is not a binary of relay-userspace \
                                 (target/release/<a [[bin]] of relay-userspace/Cargo.toml>)"
                            ));
                        } else if !built {
                            problems.push(format!(
                                "{at}: {source} is copied before any `RUN cargo xtask build`"
                            ));
                        }
                        continue;
                    }
                    let relative = source.trim_start_matches("./");
                    if !root.join(relative).exists() {
                        problems.push(format!(
                            "{at}: COPY source {source} does not exist in the repository \
                             (the build context is the repository root)"
                        ));
                    }
                    let first = relative.split('/').next().unwrap_or(relative);
                    if ignored
                        .iter()
                        .any(|pattern| pattern == first || pattern == relative)
                    {
                        problems.push(format!(
                            "{at}: COPY source {source} is excluded by {ignore_path}"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every `turnx_*` identifier in `text`.
fn turnx_names(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let is_ident = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let mut names = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("turnx_") {
        let start = at + found;
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !is_ident(bytes[start - 1]) {
            names.push(&text[start..end]);
        }
        at = end;
    }
    names
}

/// The families listed in `FAMILIES` of the metrics module's source, the
/// one list of what turnxd exports (its unit tests hold the list to what
/// it renders).
fn exported_families(module: &str) -> Option<Vec<&str>> {
    let start = module.find("pub const FAMILIES")?;
    let list = &module[start..];
    let list = &list[list.find('[')?..list.find("];")?];
    // The first bracket opens the type, `[&str; N]`; the names follow `=`.
    let names = &list[list.find('=')?..];
    Some(names.split('"').skip(1).step_by(2).collect::<Vec<_>>())
}

fn metric_names(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    let module = read(root, METRICS_MODULE)?;
    let Some(families) = exported_families(&module) else {
        problems.push(format!(
            "{METRICS_MODULE}: no `pub const FAMILIES` list of metric names found; \
             deploy-check reads the exported families from it"
        ));
        return Ok(());
    };
    for path in [ALERTS, ALERTS_TEST, DASHBOARD] {
        let text = read(root, path)?;
        let mut seen: Vec<&str> = turnx_names(&text);
        seen.sort_unstable();
        seen.dedup();
        for name in seen {
            if !families.contains(&name) {
                problems.push(format!(
                    "{path}: {name} is not a family turnxd exports (FAMILIES in \
                     {METRICS_MODULE}); use an exported family, or export it there"
                ));
            }
        }
    }
    Ok(())
}

fn promtool(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    for (what, args) in [
        ("check rules", ["check", "rules", ALERTS]),
        ("test rules", ["test", "rules", ALERTS_TEST]),
    ] {
        let mut command = Command::new("promtool");
        command.args(args).current_dir(root);
        let output = command
            .output()
            .with_context(|| format!("starting {}", describe(&command)))?;
        if !output.status.success() {
            problems.push(format!(
                "`promtool {what}` failed for {}:\n{}{}",
                args[2],
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    Ok(())
}

/// The kustomization directories: the base and every example.
fn kustomizations(root: &Path, problems: &mut Vec<String>) -> Result<Vec<String>> {
    let mut dirs = vec!["deploy/base".to_owned()];
    let mut examples: Vec<String> = fs::read_dir(root.join("deploy/examples"))
        .context("reading deploy/examples")?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_dir())
        .map(|entry| format!("deploy/examples/{}", entry.file_name().to_string_lossy()))
        .collect();
    examples.sort();
    dirs.extend(examples);
    dirs.retain(|dir| {
        let found = root.join(dir).join("kustomization.yaml").is_file();
        if !found {
            problems.push(format!("{dir}: no kustomization.yaml"));
        }
        found
    });
    Ok(dirs)
}

/// Renders each kustomization into target/deploy-check/; returns the
/// files to validate.
fn render(root: &Path, problems: &mut Vec<String>) -> Result<Vec<PathBuf>> {
    let out = root.join("target/deploy-check");
    fs::create_dir_all(&out)?;
    let dirs = kustomizations(root, problems)?;
    if !setup::on_path("kubectl") {
        println!(
            "deploy-check: kubectl (with kustomize) is not on PATH, so the examples' overlays \
             are not rendered; validating the base's files one by one"
        );
        let base = read(root, "deploy/base/kustomization.yaml")?;
        return Ok(base
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- "))
            .filter(|name| name.ends_with(".yaml"))
            .map(|name| root.join("deploy/base").join(name))
            .collect());
    }
    let mut rendered = Vec::new();
    for dir in dirs {
        let mut command = Command::new("kubectl");
        command.args(["kustomize", &dir]).current_dir(root);
        let output = command
            .output()
            .with_context(|| format!("starting {}", describe(&command)))?;
        if !output.status.success() {
            problems.push(format!(
                "{dir}: `kubectl kustomize` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
            continue;
        }
        let file = out.join(format!("{}.yaml", dir.replace('/', "_")));
        fs::write(&file, &output.stdout)?;
        rendered.push(file);
    }
    Ok(rendered)
}

/// `kubernetes-validate --strict`; a kind it has no schema for must be one
/// whose CRD schema deploy/schemas holds.
fn kubernetes_validate(
    root: &Path,
    tools: &setup::DeployTools,
    files: &[PathBuf],
    problems: &mut Vec<String>,
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mut command = Command::new(&tools.kubernetes_validate);
    command
        .args(["--strict", "-k", KUBERNETES_VERSION, "--quiet"])
        .args(files)
        .current_dir(root);
    let output = command
        .output()
        .with_context(|| format!("starting {}", describe(&command)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let schemas: Vec<String> = fs::read_dir(root.join(SCHEMAS))
        .with_context(|| format!("reading {SCHEMAS}"))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let mut failed = !output.status.success();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        // "WARN <file> Couldn't find schema for kind K with api version G/V ..."
        if let Some(rest) = line.split("Couldn't find schema for kind ").nth(1) {
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap_or("");
            let api = words.nth(3).unwrap_or("");
            let schema = format!("{}_{}.json", api.replace('/', "_"), kind.to_lowercase());
            if !schemas.contains(&schema) {
                problems.push(format!(
                    "no schema for {kind} ({api}): add the CRD's openAPIV3Schema as \
                     {SCHEMAS}/{schema}, or fix the apiVersion/kind ({line})"
                ));
            }
        } else if line.starts_with("INFO") {
            continue;
        } else {
            failed = true;
            problems.push(format!("kubernetes-validate {KUBERNETES_VERSION}: {line}"));
        }
    }
    if failed
        && !problems
            .iter()
            .any(|p| p.starts_with("kubernetes-validate"))
    {
        problems.push(format!("kubernetes-validate failed:\n{text}"));
    }
    Ok(())
}

/// What needs a YAML and JSON Schema library, run with the venv's Python:
/// CRD objects against deploy/schemas, the API server's rules no schema
/// holds, turnxd.toml's keys, and the dashboard's structure.
const PYTHON_CHECKS: &str = r#"
import json, os, sys, tomllib
import jsonschema, yaml

schemas_dir, default_config, dashboard, *files = sys.argv[1:]
problems = []

def strict(node):
    # As `kubectl apply` with server-side field validation: unknown fields
    # are errors, except where the schema keeps them.
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node

def keys(table, prefix=""):
    for k, v in table.items():
        yield prefix + k
        if isinstance(v, dict) and prefix == "":
            yield from keys(v, k + ".")

with open(default_config, "rb") as f:
    known_keys = set(keys(tomllib.load(f)))
# [auth] users is a map of names.
known_tables_with_free_keys = {"auth.users"}

def pod_rules(where, spec):
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        sc = c.get("securityContext", {}) or {}
        privileged = sc.get("privileged", False)
        added = (sc.get("capabilities", {}) or {}).get("add", []) or []
        name = f"{where} container {c['name']}"
        if sc.get("allowPrivilegeEscalation") is False and (privileged or "SYS_ADMIN" in added or "CAP_SYS_ADMIN" in added):
            problems.append(f"{name}: the API server refuses allowPrivilegeEscalation: false with privileged or CAP_SYS_ADMIN; leave it true")
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional" and not privileged:
                problems.append(f"{name}: mountPropagation Bidirectional on {m['mountPath']} needs privileged: true (the API server refuses it otherwise); use HostToContainer")
            volume = volumes.get(m["name"])
            if volume is None:
                problems.append(f"{name}: volumeMount {m['name']} names no volume of the pod")
            elif "configMap" in volume and m.get("subPath"):
                problems.append(f"{name}: ConfigMap volume {m['name']} mounted with subPath is never updated, so turnxd cannot reload it; mount the directory")

for path in files:
    with open(path) as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d]
        except yaml.YAMLError as e:
            problems.append(f"{path}: not YAML: {e}")
            continue
    for doc in docs:
        kind, api = doc.get("kind", "?"), doc.get("apiVersion", "?")
        where = f"{path}: {kind}/{doc.get('metadata', {}).get('name', '?')}"
        schema_file = os.path.join(schemas_dir, f"{api.replace('/', '_')}_{kind.lower()}.json")
        if os.path.exists(schema_file):
            with open(schema_file) as f:
                schema = strict(json.load(f))
            for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
                at = "/".join(str(p) for p in error.absolute_path)
                problems.append(f"{where}: {at}: {error.message} (schema {schema_file})")
        template = (doc.get("spec", {}) or {}).get("template", {}) if kind in ("DaemonSet", "Deployment", "StatefulSet", "Job") else None
        if template:
            pod_rules(where, template.get("spec", {}))
        if kind == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                if not key.endswith(".toml"):
                    continue
                try:
                    config = tomllib.loads(value)
                except tomllib.TOMLDecodeError as e:
                    problems.append(f"{where}: {key} is not TOML: {e}")
                    continue
                for k in keys(config):
                    if k not in known_keys and not any(k.startswith(t + ".") for t in known_tables_with_free_keys):
                        problems.append(f"{where}: {key}: unknown key {k} (not in {default_config})")

try:
    with open(dashboard) as f:
        board = json.load(f)
except ValueError as e:
    problems.append(f"{dashboard}: not JSON: {e}")
    board = None
if board is not None:
    variables = board.get("templating", {}).get("list", [])
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables):
        problems.append(f"{dashboard}: no Prometheus datasource variable in templating")
    ids = set()
    def walk(panels):
        for p in panels:
            title = p.get("title", "?")
            if p.get("id") in ids:
                problems.append(f"{dashboard}: panel id {p.get('id')} ({title}) is used twice")
            ids.add(p.get("id"))
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            targets = p.get("targets", [])
            if not targets or not all(t.get("expr") for t in targets):
                problems.append(f"{dashboard}: panel {title!r} has a target without expr")
            for t in [p] + targets:
                uid = (t.get("datasource") or {}).get("uid")
                if uid != "${datasource}":
                    problems.append(f"{dashboard}: panel {title!r} uses datasource {uid!r}, not the ${{datasource}} variable")
    walk(board.get("panels", []))
    if not ids:
        problems.append(f"{dashboard}: no panels")

for p in problems:
    print(p)
sys.exit(1 if problems else 0)
"#;

fn python_checks(
    root: &Path,
    tools: &setup::DeployTools,
    files: &[PathBuf],
    problems: &mut Vec<String>,
) -> Result<()> {
    let script = root.join("target/deploy-check/checks.py");
    fs::create_dir_all(script.parent().expect("a parent"))?;
    fs::write(&script, PYTHON_CHECKS)?;
    let mut command = Command::new(&tools.python);
    command
        .arg(&script)
        .args([SCHEMAS, DEFAULT_CONFIG, DASHBOARD])
        .args(files)
        .current_dir(root);
    let output = command
        .output()
        .with_context(|| format!("starting {}", describe(&command)))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    problems.extend(stdout.lines().map(str::to_owned));
    if !output.status.success() && stdout.trim().is_empty() {
        problems.push(format!(
            "{} failed: {}",
            describe(&command),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

fn read(root: &Path, path: &str) -> Result<String> {
    fs::read_to_string(root.join(path)).with_context(|| format!("reading {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_turnx_identifiers_only_whole() {
        let expr =
            r#"sum(rate(turnx_packets_total{path="kernel"}[5m])) / x_turnx_no + turnx_ready"#;
        assert_eq!(turnx_names(expr), ["turnx_packets_total", "turnx_ready"]);
    }

    #[test]
    fn the_exported_families_are_read_from_the_metrics_module() {
        let module = include_str!("../../relay-userspace/src/metrics.rs");
        let families = exported_families(module).unwrap();
        assert!(families.contains(&"turnx_packets_total"), "{families:?}");
        assert!(families.iter().all(|name| name.starts_with("turnx_")));
        let declared = module
            .split("pub const FAMILIES: [&str; ")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .and_then(|count| count.parse::<usize>().ok());
        assert_eq!(Some(families.len()), declared);
    }

    #[test]
    fn joins_continued_containerfile_lines() {
        let text = "FROM a AS b\n# note\nRUN one \\\n    # inside\n    && two\nCOPY x y\n";
        let parsed = instructions(text);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[1].keyword, "RUN");
        assert_eq!(parsed[1].args, "one && two");
        assert_eq!(parsed[2].line, 6);
    }
}
