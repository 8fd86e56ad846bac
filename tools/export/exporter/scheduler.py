"""The manifest's scheduler settings: from the checkpoint's scheduler_config.json when there is one (missing keys take
diffusers' class defaults, as diffusers' from_config does), else CogVideoX's checkpoint settings (../shared/
COGVIDEOX.md §6: snr_shift_scale 3.0 for 2B, 1.0 for the RoPE models 5B and 5B-I2V)."""

from typing import Any, Dict, Optional

from .errors import ExportError

SCHEDULER_CLASSES = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")
# The manifest's scheduler kind of each class: Reel runs each as diffusers does (runtime/sampler.h).
KINDS = {"CogVideoXDDIMScheduler": "cogvideox_ddim", "CogVideoXDPMScheduler": "cogvideox_dpm"}

# __init__ defaults of diffusers' CogVideoXDDIMScheduler / CogVideoXDPMScheduler (they are the same).
_CLASS_DEFAULTS: Dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "trained_betas": None, "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0,
    "prediction_type": "epsilon", "timestep_spacing": "leading", "rescale_betas_zero_snr": False,
    "snr_shift_scale": 3.0,
}

# What CogVideoX 1.0 checkpoints ship (the conversion script's values).
_COGVIDEOX: Dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "trained_betas": None, "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0,
    "prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True,
}


def scheduler_settings(config: Optional[Dict[str, Any]], rotary: bool, source: str) -> Dict[str, Any]:
    """The manifest's `scheduler` object, in the order Reel writes it."""
    cls = SCHEDULER_CLASSES[0]
    if config is None:
        s = dict(_COGVIDEOX, snr_shift_scale=1.0 if rotary else 3.0)
    else:
        cls = config.get("_class_name", SCHEDULER_CLASSES[0])
        if cls not in SCHEDULER_CLASSES:
            raise ExportError(f"{source}: _class_name '{cls}' is not supported; accepted "
                              f"{' or '.join(SCHEDULER_CLASSES)}")
        s = dict(_CLASS_DEFAULTS)
        s.update({k: v for k, v in config.items() if k in _CLASS_DEFAULTS})

    def refuse(key, accepted):
        raise ExportError(f"{source}: {key} {s[key]!r} is not supported by Reel's CogVideoX schedulers; accepted {accepted}")

    if s["trained_betas"] is not None:
        refuse("trained_betas", "null")
    if s["clip_sample"]:
        refuse("clip_sample", "false")
    if s["beta_schedule"] not in ("scaled_linear", "linear"):
        refuse("beta_schedule", "'scaled_linear' or 'linear'")
    if s["prediction_type"] not in ("v_prediction", "epsilon"):
        refuse("prediction_type", "'v_prediction' or 'epsilon'")
    if s["timestep_spacing"] not in ("trailing", "leading", "linspace"):
        refuse("timestep_spacing", "'trailing', 'leading' or 'linspace'")
    if s["timestep_spacing"] == "leading" and s["steps_offset"] != 0:
        refuse("steps_offset", "0 with leading spacing")
    for key, lo, hi in (("num_train_timesteps", 2, 100000), ("beta_start", 0, 1), ("beta_end", 0, 1),
                        ("snr_shift_scale", 1e-3, 1e3)):
        if not isinstance(s[key], (int, float)) or isinstance(s[key], bool) or not lo <= s[key] <= hi:
            refuse(key, f"a number from {lo} to {hi}")
    if not isinstance(s["num_train_timesteps"], int):
        refuse("num_train_timesteps", "an integer")
    for key in ("rescale_betas_zero_snr", "set_alpha_to_one"):
        if not isinstance(s[key], bool):
            refuse(key, "true or false")
    return {"kind": KINDS[cls], "num_train_timesteps": s["num_train_timesteps"],
            "beta_schedule": s["beta_schedule"], "beta_start": float(s["beta_start"]), "beta_end": float(s["beta_end"]),
            "prediction_type": s["prediction_type"], "timestep_spacing": s["timestep_spacing"],
            "rescale_betas_zero_snr": s["rescale_betas_zero_snr"], "set_alpha_to_one": s["set_alpha_to_one"],
            "snr_shift_scale": float(s["snr_shift_scale"])}
