// Validates PodMonitor and PrometheusRule objects (YAML documents on the files given) against
// the Prometheus Operator's own schema, as @kubernetes-models/prometheus-operator generates it from the CRD,
// and — strictly, as `kubectl apply --validate=strict` would — rejects any field the CRD's
// types do not declare. Exit 1 with one line per problem.
// Run with NODE_PATH pointing at the node_modules scripts/install-deps.sh fills.
import { createRequire } from "node:module";
import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";

const require = createRequire(join(process.env.NODE_PATH ?? ".", "noop.js"));
const YAML = require("yaml");
const pkg = dirname(require.resolve("@kubernetes-models/prometheus-operator/package.json"));
const { PodMonitor } = require(join(pkg, "monitoring.coreos.com/v1/PodMonitor.js"));
const { PrometheusRule } = require(join(pkg, "monitoring.coreos.com/v1/PrometheusRule.js"));

// Property names an interface declares in the package's .d.ts, with those it extends.
function declared(file) {
  const path = join(pkg, "monitoring.coreos.com/v1", file + ".d.ts");
  const text = readFileSync(path, "utf8");
  const names = new Set([...text.matchAll(/^ {4}"?([A-Za-z0-9_]+)"?\??:/gm)].map((m) => m[1]));
  for (const m of text.matchAll(/extends IComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1(\w+)/g)) {
    if (existsSync(join(pkg, "monitoring.coreos.com/v1", m[1] + ".d.ts"))) {
      for (const n of declared(m[1])) names.add(n);
    }
  }
  return names;
}

const problems = [];
function strict(obj, type, where) {
  const known = declared(type);
  for (const k of Object.keys(obj ?? {})) {
    if (!known.has(k)) problems.push(`${where}.${k}: unknown field (not in ${type})`);
  }
}

let seen = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of YAML.parseAllDocuments(readFileSync(file, "utf8"))) {
    const o = doc.toJS();
    if (!o || (o.kind !== "PodMonitor" && o.kind !== "PrometheusRule")) continue;
    seen++;
    const name = `${file}: ${o.kind} ${o.metadata?.name}`;
    try {
      new (o.kind === "PodMonitor" ? PodMonitor : PrometheusRule)(o).validate();
    } catch (e) {
      problems.push(`${name}: ${e.message}`);
    }
    if (o.kind === "PodMonitor") {
      strict(o.spec, "PodMonitorSpec", `${name} spec`);
      (o.spec?.podMetricsEndpoints ?? []).forEach((ep, i) => {
        strict(ep, "PodMetricsEndpoint", `${name} spec.podMetricsEndpoints[${i}]`);
        (ep.relabelings ?? []).forEach((r, j) =>
          strict(r, "RelabelConfig", `${name} spec.podMetricsEndpoints[${i}].relabelings[${j}]`));
      });
    } else {
      strict(o.spec, "PrometheusRuleSpec", `${name} spec`);
      (o.spec?.groups ?? []).forEach((g, i) => {
        strict(g, "RuleGroup", `${name} spec.groups[${i}]`);
        (g.rules ?? []).forEach((r, j) => strict(r, "Rule", `${name} spec.groups[${i}].rules[${j}]`));
      });
    }
  }
}
if (seen === 0) problems.push("no PodMonitor or PrometheusRule found");
for (const p of problems) console.log(p);
console.log(`${seen} object(s), ${problems.length} problem(s)`);
process.exit(problems.length ? 1 : 0);
