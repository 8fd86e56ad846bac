"""Strict offline validation of Kubernetes manifests against the API models of Debian's python3-kubernetes: every
field must exist in its object's schema (a misspelt key is an error, not ignored), have the schema's type, and
every required field must be present; enum values the models list are checked. The models are Kubernetes 1.22's;
fields added since that deploy/kubernetes uses are declared in NEWER below (from the Kubernetes API reference).
It checks no semantics a server would (defaulting, admission, cross-object references)."""
import kubernetes.client as kc
from kubernetes.client.configuration import Configuration

KINDS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
# Probe.grpc: beta in Kubernetes 1.24, GA in 1.27 (GRPCAction: port int32 required, service string).
NEWER_FIELDS = {"V1Probe": {"grpc": "V1GRPCAction"}}
NEWER_MODELS = {"V1GRPCAction": ({"port": "int", "service": "str"}, {"port"})}
_info = {}
_cfg = Configuration()
_cfg.client_side_validation = True


def _model(name):
    """(json key -> type string, required json keys, model class or None)."""
    if name in _info:
        return _info[name]
    if name in NEWER_MODELS:
        types, required = NEWER_MODELS[name]
        _info[name] = (dict(types), set(required), None)
        return _info[name]
    cls = getattr(kc, name)
    types = {cls.attribute_map[a]: t for a, t in cls.openapi_types.items()}
    types.update(NEWER_FIELDS.get(name, {}))
    required = set()
    probe = cls.__new__(cls)
    probe.local_vars_configuration = _cfg
    for attr in cls.openapi_types:
        try:
            setattr(probe, attr, None)
        except ValueError:
            required.add(cls.attribute_map[attr])
    _info[name] = (types, required, cls)
    return _info[name]


def _check(value, typ, path, errors, quantity=False):
    if typ.startswith("list[") and typ.endswith("]"):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            _check(v, typ[5:-1], f"{path}[{i}]", errors)
    elif typ.startswith("dict(") and typ.endswith(")"):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        inner = typ[5:-1].split(",", 1)[1].strip()
        for k, v in value.items():
            _check(v, inner, f"{path}.{k}", errors, quantity)
    elif typ == "str":
        ok = isinstance(value, str) or (quantity and isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            errors.append(f"{path}: expected a string, got {value!r}")
    elif typ == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: expected an integer, got {value!r}")
    elif typ == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errors.append(f"{path}: expected a number, got {value!r}")
    elif typ == "bool":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {value!r}")
    elif typ in ("object", "datetime"):
        pass  # IntOrString, Quantity, RawExtension, timestamps: any scalar the server parses
    else:
        validate_object(value, typ, path, errors)


def validate_object(obj, model, path, errors):
    if not isinstance(obj, dict):
        errors.append(f"{path}: expected an object ({model}), got {obj!r}")
        return
    types, required, cls = _model(model)
    for key in sorted(required - obj.keys()):
        errors.append(f"{path}.{key}: required by {model}, missing")
    for key, value in obj.items():
        if key not in types:
            errors.append(f"{path}.{key}: unknown field of {model}; accepted: {', '.join(sorted(types))}")
            continue
        typ = types[key]
        quantity = model == "V1ResourceRequirements"
        _check(value, typ, f"{path}.{key}", errors, quantity)
        if cls is not None and typ in ("str", "int", "bool") and key not in NEWER_FIELDS.get(model, {}):
            attr = next(a for a, k in cls.attribute_map.items() if k == key)
            probe = cls.__new__(cls)
            probe.local_vars_configuration = _cfg
            try:
                setattr(probe, attr, value)
            except ValueError as e:  # the models' enum checks
                errors.append(f"{path}.{key}: {e}")


def validate(doc, where):
    """Errors (one line each) of one manifest document."""
    if not isinstance(doc, dict):
        return [f"{where}: not a mapping"]
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in KINDS:
        return [f"{where}: apiVersion {key[0]!r} kind {key[1]!r}: accepted {sorted(KINDS)}"]
    errors = []
    validate_object(doc, KINDS[key], f"{where} {key[1]}", errors)
    return errors
