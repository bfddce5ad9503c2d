// The structural half of tests/helm_chart.rs, in node because the tools are npm packages:
//
//   node crds.mjs RENDERED.yaml [WORKDIR]
//
// reads helm's multi-document output with js-yaml and prints it as one JSON array (the Rust
// test checks the objects from it); validates every custom resource (KEDA's ScaledObject,
// prometheus-operator's ServiceMonitor and PrometheusRule) with @kubernetes-models'
// `validate()` (types, required fields, enums); and, given a WORKDIR, as that ignores unknown
// keys, type-checks each one against the same packages' TypeScript interfaces with
// `tsc --strict` there, where an object literal's unknown key is an error ("excess property").
// Needs TRIBUTARY_OPS_NODE_MODULES: the node_modules of deploy/local/ops-tools.sh node.
import { execFileSync } from "node:child_process";
import { readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.TRIBUTARY_OPS_NODE_MODULES;
const [rendered, workdir] = process.argv.slice(2);
if (!modules || !rendered) {
  console.error("usage: TRIBUTARY_OPS_NODE_MODULES=DIR node crds.mjs RENDERED.yaml [WORKDIR]");
  process.exit(2);
}
const load = (path) => import(pathToFileURL(join(modules, path)).href);

const yaml = (await load("js-yaml/dist/js-yaml.mjs")).default;
const docs = yaml.loadAll(readFileSync(rendered, "utf8")).filter((d) => d !== null && d !== undefined);

// apiVersion/kind → the model's module, class and TypeScript interface.
const models = {
  "keda.sh/v1alpha1/ScaledObject": ["@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject", "ScaledObject", "IScaledObject"],
  "monitoring.coreos.com/v1/ServiceMonitor": [
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
    "ServiceMonitor",
    "IServiceMonitor",
  ],
  "monitoring.coreos.com/v1/PrometheusRule": [
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
    "PrometheusRule",
    "IPrometheusRule",
  ],
};
const builtIn = /^(v1|apps\/v1|policy\/v1|autoscaling\/v2|networking\.k8s\.io\/v1)$/;

const failures = [];
const typed = [];
for (const doc of docs) {
  const id = `${doc.apiVersion}/${doc.kind}`;
  const model = models[id];
  if (!model) {
    if (!builtIn.test(doc.apiVersion)) failures.push(`${id} ${doc.metadata?.name}: no model to validate it with`);
    continue;
  }
  const [path, className, iface] = model;
  const Model = (await load(`${path}.js`))[className];
  try {
    new Model(doc).validate();
  } catch (e) {
    failures.push(`${id} ${doc.metadata?.name}: ${e.message}`);
  }
  typed.push({ id, path, iface, doc });
}

if (workdir && typed.length > 0) {
  symlinkSync(modules, join(workdir, "node_modules"));
  const imports = [...new Set(typed.map((t) => `import type { ${t.iface} } from "${t.path}";`))];
  const checks = typed.map((t, i) => `// ${t.id}\nexport const doc${i} = ${JSON.stringify(t.doc, null, 2)} satisfies ${t.iface};`);
  writeFileSync(join(workdir, "crds.ts"), `${imports.join("\n")}\n\n${checks.join("\n\n")}\n`);
  const tsc = join(modules, "typescript/bin/tsc");
  const args = ["--strict", "--noEmit", "--skipLibCheck", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext", "crds.ts"];
  try {
    execFileSync(process.execPath, [tsc, ...args], { cwd: workdir, encoding: "utf8", stdio: "pipe" });
  } catch (e) {
    failures.push(`tsc (unknown or mistyped fields) in ${join(workdir, "crds.ts")}:\n${e.stdout}${e.stderr}`);
  }
}

if (failures.length > 0) {
  console.error(failures.join("\n"));
  process.exit(1);
}
process.stdout.write(JSON.stringify(docs));
