#!/usr/bin/env python3
"""Write kubeconform schemas (OUT/<group>/<kind>_<version>.json) without the network.

  jsonschemas.py crds OUT FILE.yaml...     from CustomResourceDefinitions (openAPIV3Schema)
  jsonschemas.py openapi OUT GV.json...    from a kube-apiserver's /openapi/v3/<gv> documents

Strict: every object schema that lists properties and allows nothing else gets
additionalProperties: false, so a misspelt field fails (kubeconform -strict only adds that for its
own schema location). int-or-string and Quantity accept both forms, as the apiserver does.
"""
import json
import os
import sys

import yaml


def tighten(s):
    """Make a Kubernetes OpenAPI v3 schema a JSON schema kubeconform validates strictly.

    Walks schema keywords only: a field that happens to be called `properties` is data, not a
    keyword, so maps of schemas are walked entry by entry."""
    if not isinstance(s, dict):
        return s
    s = dict(s)
    if isinstance(s.get("properties"), dict):
        s["properties"] = {k: tighten(v) for k, v in s["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            s[key] = tighten(s[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(s.get(key), list):
            s[key] = [tighten(x) for x in s[key]]
    if s.get("x-kubernetes-int-or-string") or s.get("format") == "int-or-string":
        s.pop("type", None)
        s.pop("format", None)
        s["anyOf"] = [{"type": "string"}, {"type": "integer"}]
    if s.get("nullable"):
        t = s.get("type")
        if isinstance(t, str):
            s["type"] = [t, "null"]
    if (
        "properties" in s
        and "additionalProperties" not in s
        and not s.get("x-kubernetes-preserve-unknown-fields")
    ):
        s["additionalProperties"] = False
    return s


def write(out, group, kind, version, schema):
    # kubeconform fills {{ .Group }} with the part of apiVersion before "/", so "v1" for core.
    d = os.path.join(out, group or version)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{kind.lower()}_{version}.json")
    with open(path, "w") as f:
        json.dump(schema, f)
    return path


def crds(out, files):
    for fn in files:
        with open(fn) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for v in spec["versions"]:
                    schema = tighten(v["schema"]["openAPIV3Schema"])
                    props = schema.setdefault("properties", {})
                    props.setdefault("apiVersion", {"type": "string"})
                    props.setdefault("kind", {"type": "string"})
                    props.setdefault("metadata", {"type": "object"})
                    print(write(out, spec["group"], spec["names"]["kind"], v["name"], schema))


def openapi(out, files):
    # Quantity is a string or a number on the wire.
    quantity = "io.k8s.apimachinery.pkg.api.resource.Quantity"
    for fn in files:
        with open(fn) as f:
            doc = json.load(f)
        schemas = doc.get("components", {}).get("schemas", {})
        if quantity in schemas:
            schemas[quantity] = {"anyOf": [{"type": "string"}, {"type": "number"}]}
        defs = {name: tighten(s) for name, s in schemas.items()}
        # The references inside point at #/components/schemas/...; keep that layout.
        for name, s in schemas.items():
            for gvk in s.get("x-kubernetes-group-version-kind", []):
                # Skip the list/option kinds shared by every group (they carry group "" in core).
                if name.startswith("io.k8s.apimachinery."):
                    continue
                schema = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": defs}}
                write(out, gvk["group"], gvk["kind"], gvk["version"], schema)


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("crds", "openapi"):
        sys.exit(__doc__)
    {"crds": crds, "openapi": openapi}[sys.argv[1]](sys.argv[2], sys.argv[3:])


if __name__ == "__main__":
    main()
