//! The built-in presets: the YAML files under `configs/`, compiled in so names work anywhere.

/// Preset names, in display order.
pub const NAMES: &[&str] = &["sd15", "sd21", "sdxl", "mobilediffusion", "md-lite"];

/// The YAML text of a preset.
pub fn yaml(name: &str) -> Option<&'static str> {
    Some(match name {
        "sd15" => include_str!("../../../configs/sd15.yaml"),
        "sd21" => include_str!("../../../configs/sd21.yaml"),
        "sdxl" => include_str!("../../../configs/sdxl.yaml"),
        "mobilediffusion" => include_str!("../../../configs/mobilediffusion.yaml"),
        "md-lite" => include_str!("../../../configs/md-lite.yaml"),
        _ => return None,
    })
}
