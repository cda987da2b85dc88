// Validates custom resources by the prometheus-operator's schemas, for tests/test_helm_chart.py.
//   node validate_custom_resources.mjs <dir with node_modules> < documents.json
// stdin: a JSON list of objects; stdout: a JSON list with, for each, null or its error.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modelsDir] = process.argv.slice(2);
const models = join(modelsDir, "node_modules", "@kubernetes-models", "prometheus-operator");
const documents = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const document of documents) {
  const [group, version] = document.apiVersion.split("/");
  const path = join(models, group, version, `${document.kind}.js`);
  try {
    const module = await import(pathToFileURL(path).href);
    new module[document.kind](document).validate();
    results.push(null);
  } catch (error) {
    results.push(String(error.message ?? error));
  }
}
process.stdout.write(JSON.stringify(results));
