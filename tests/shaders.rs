//! Every WGSL module the crate compiles, exactly as composed by
//! `ShaderFamily::source`, parsed and validated by naga and translated to each
//! backend's language: SPIR-V (Vulkan), MSL (Metal), HLSL (DX12), GLSL (GL).
//! Needs no GPU.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use wgpu_batchnorm::shaders::ShaderFamily;

/// A validator that allows subgroup operations in compute shaders only where
/// the module is the subgroup variant.
fn validator(subgroups: bool) -> Validator {
    if subgroups {
        let mut v = Validator::new(ValidationFlags::all(), Capabilities::SUBGROUP);
        v.subgroup_stages(naga::valid::ShaderStages::COMPUTE).subgroup_operations(naga::valid::SubgroupOperationSet::all());
        v
    } else {
        Validator::new(ValidationFlags::all(), Capabilities::empty())
    }
}

fn parse(family: ShaderFamily, width: wgpu_batchnorm::Width, wg: u32, subgroups: bool) -> (naga::Module, naga::valid::ModuleInfo) {
    let source = family.source(width, wg, subgroups);
    let name = format!("{} ({width:?}, WG {wg}, subgroups {subgroups})", family.file_name());
    let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(&source)));
    let info =
        validator(subgroups).validate(&module).unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(&source)));
    (module, info)
}

/// Every module the crate can compile, at WG 256: each family at each width,
/// and the subgroup variant of the families that have one.
fn each_module(mut f: impl FnMut(ShaderFamily, wgpu_batchnorm::Width, bool, &naga::Module, &naga::valid::ModuleInfo)) {
    for family in ShaderFamily::ALL {
        for &width in family.widths() {
            for subgroups in [false, true] {
                if subgroups && !family.has_subgroup_variant() {
                    continue;
                }
                let (module, info) = parse(family, width, 256, subgroups);
                f(family, width, subgroups, &module, &info);
            }
        }
    }
}

#[test]
fn every_module_validates_with_the_entry_points_the_crate_uses() {
    each_module(|family, width, _, module, _| {
        let names: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
        for wanted in family.entry_points() {
            assert!(names.contains(wanted), "{} ({width:?}) lacks entry point {wanted}: {names:?}", family.file_name());
        }
        assert_eq!(names.len(), family.entry_points().len(), "{}: {names:?}", family.file_name());
    });
}

/// Every workgroup size a tuning may choose gives a valid module.
#[test]
fn every_workgroup_size_validates() {
    for family in ShaderFamily::ALL {
        for &width in family.widths() {
            for wg in [1, 2, 8, 64, 256] {
                parse(family, width, wg, false);
                if family.has_subgroup_variant() {
                    parse(family, width, wg, true);
                }
            }
        }
    }
}

#[test]
fn translates_to_spirv() {
    each_module(|family, width, _, module, info| {
        for ep in family.entry_points() {
            let pipeline = spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: ep.to_string() };
            spv::write_vec(module, info, &spv::Options::default(), Some(&pipeline))
                .unwrap_or_else(|e| panic!("{} {ep} ({width:?}) -> SPIR-V: {e}", family.file_name()));
        }
    });
}

#[test]
fn translates_to_msl() {
    each_module(|family, width, _, module, info| {
        let options = msl::Options { lang_version: (2, 1), ..Default::default() };
        msl::write_string(module, info, &options, &msl::PipelineOptions::default())
            .unwrap_or_else(|e| panic!("{} ({width:?}) -> MSL: {e}", family.file_name()));
    });
}

#[test]
fn translates_to_hlsl() {
    each_module(|family, width, _, module, info| {
        let mut out = String::new();
        let options = hlsl::Options::default();
        let pipeline = hlsl::PipelineOptions::default();
        hlsl::Writer::new(&mut out, &options, &pipeline)
            .write(module, info, None)
            .unwrap_or_else(|e| panic!("{} ({width:?}) -> HLSL: {e}", family.file_name()));
    });
}

#[test]
fn translates_to_glsl_es_310() {
    each_module(|family, width, _, module, info| {
        for ep in family.entry_points() {
            let options = glsl::Options { version: glsl::Version::Embedded { version: 310, is_webgl: false }, ..Default::default() };
            let pipeline = glsl::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: ep.to_string(), multiview: None };
            let mut out = String::new();
            glsl::Writer::new(&mut out, module, info, &options, &pipeline, naga::proc::BoundsCheckPolicies::default())
                .and_then(|mut w| w.write())
                .unwrap_or_else(|e| panic!("{} {ep} ({width:?}) -> GLSL: {e}", family.file_name()));
        }
    });
}
