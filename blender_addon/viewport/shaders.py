"""GLSL for the splat viewport, built with ``gpu.types.GPUShaderCreateInfo``.

Splat shader (one instanced quad per splat, drawn back to front with premultiplied alpha):

* vertex: fetch splat ``order[gl_InstanceID]``; build its 3D covariance from the quaternion and
  scales; transform centre and covariance into the
  camera (OpenCV axes, as gsplat), EWA-project the covariance with gsplat's Jacobian (including its
  clamping of off-screen centres) plus the 0.3 px^2 low-pass, invert to the conic, and stretch the
  quad along the 2D covariance's eigenvectors to ``min(3.33, sqrt(2 ln(255 opacity)))`` sigmas:
  exactly the region where the Gaussian's alpha can reach 1/255. Colour: SH up to the chosen
  degree for the direction from the camera to the centre (object space), ``sh + 0.5``, then the
  colour-grade preview (an affine map, optional), the clamp at 0 and, in Edit Mode, the tint of
  selected (orange) and locked (grey) splats (the draw flag in ``rot_scale``).
* fragment: ``alpha = min(0.999, opacity * exp(-0.5 d^T conic d))``; discarded below 1/255;
  output premultiplied ``(rgb * alpha, alpha)``.

These match gsplat 1.5 / ``backend.render.reference`` (ALPHA_THRESHOLD, ALPHA_MAX, eps2d, the
extent and the depth order), so over a black background the viewport gives the same image.

Point shader (point mode for very large sets): fixed-size opaque squares in the DC colour, drawn
unsorted with depth writes.

Pixel space in the shaders is OpenCV's (x right, y down, origin at the top-left corner), converted
to NDC at the end; the matrices are Blender's OpenGL ones (``view @ object`` and the window
projection), orthographic views included (``proj[3][3] == 1``).
"""
from __future__ import annotations

from functools import lru_cache

from ..shared.sh import SH_C0, SH_C1, SH_C2, SH_C3

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
EPS2D = 0.3
MAX_EXTENT_SIGMAS = 3.33


def _glsl_float(x: float) -> str:
    return f"{x:.9g}" if "e" in f"{x:.9g}" or "." in f"{x:.9g}" else f"{x:.9g}.0"


def _sh_constants() -> str:
    lines = [f"const float SH_C0 = {_glsl_float(SH_C0)};", f"const float SH_C1 = {_glsl_float(SH_C1)};"]
    lines += [f"const float SH_C2_{i} = {_glsl_float(c)};" for i, c in enumerate(SH_C2)]
    lines += [f"const float SH_C3_{i} = {_glsl_float(c)};" for i, c in enumerate(SH_C3)]
    return "\n".join(lines)


COMMON_GLSL = """
ivec2 texel_of(int idx, int width) { return ivec2(idx % width, idx / width); }
vec4 fetch(sampler2D tex, int idx) { return texelFetch(tex, texel_of(idx, textureSize(tex, 0).x), 0); }
"""

SH_GLSL = _sh_constants() + """
vec4 sh_texels[12];
vec3 sh_coef(int k) {
  int f = 3 * k;
  return vec3(sh_texels[f / 4][f % 4], sh_texels[(f + 1) / 4][(f + 1) % 4], sh_texels[(f + 2) / 4][(f + 2) % 4]);
}
/* colour of splat idx seen along unit direction d (object space), 3DGS basis and signs */
vec3 sh_color(int idx, vec3 d, int degree) {
  int coeffs = (degree + 1) * (degree + 1);
  int texels = (3 * coeffs + 3) / 4;
  for (int j = 0; j < texels; j++) { sh_texels[j] = fetch(sh_tex, idx * sh_stride + j); }
  vec3 c = SH_C0 * sh_coef(0);
  if (degree >= 1) {
    float x = d.x, y = d.y, z = d.z;
    c += -SH_C1 * y * sh_coef(1) + SH_C1 * z * sh_coef(2) - SH_C1 * x * sh_coef(3);
    if (degree >= 2) {
      float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
      c += SH_C2_0 * xy * sh_coef(4) + SH_C2_1 * yz * sh_coef(5)
         + SH_C2_2 * (2.0 * zz - xx - yy) * sh_coef(6) + SH_C2_3 * xz * sh_coef(7)
         + SH_C2_4 * (xx - yy) * sh_coef(8);
      if (degree >= 3) {
        c += SH_C3_0 * y * (3.0 * xx - yy) * sh_coef(9) + SH_C3_1 * xy * z * sh_coef(10)
           + SH_C3_2 * y * (4.0 * zz - xx - yy) * sh_coef(11)
           + SH_C3_3 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh_coef(12)
           + SH_C3_4 * x * (4.0 * zz - xx - yy) * sh_coef(13) + SH_C3_5 * z * (xx - yy) * sh_coef(14)
           + SH_C3_6 * x * (xx - 3.0 * yy) * sh_coef(15);
      }
    }
  }
  return c + 0.5;           /* unclamped: the grade (an affine map) applies before the clamp */
}
/* final colour of splat idx: the preview grade, the clamp at 0, the selection / lock tint */
vec3 shade(int idx, vec3 rgb) {
  float flag = fetch(rot_scale_tex, 2 * idx + 1).w;
  if ((grade_mode == 1 && flag < 1.5) || (grade_mode == 2 && flag > 0.5 && flag < 1.5)) {
    rgb = mat3(grade_m) * rgb + grade_m[3].xyz;
  }
  rgb = max(rgb, vec3(0.0));
  if (show_state) {
    if (flag > 1.5) { rgb = mix(rgb, LOCKED_TINT, 0.6); }
    else if (flag > 0.5) { rgb = mix(rgb, SELECTED_TINT, 0.55); }
  }
  return rgb;
}
"""

SPLAT_VERT = """
void cull() { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); v_offset = vec2(0.0); v_conic = vec3(0.0); v_color = vec4(0.0); }

void main() {
  int idx = int(fetch(order_tex, gl_InstanceID).r + 0.5);
  vec4 center = fetch(center_tex, idx);
  float opacity = center.w;
  if (opacity < ALPHA_THRESHOLD) { cull(); return; }
  vec4 t4 = model_view * vec4(center.xyz, 1.0);
  bool ortho = proj[3][3] == 1.0;
  /* camera point in OpenCV axes (x right, y down, z forward) */
  vec3 t = vec3(t4.x, -t4.y, -t4.z);
  if (!ortho && t.z < near_clip) { cull(); return; }

  /* object-space covariance R S S^T R^T from the unit quaternion (w, x, y, z) and the scales */
  vec4 q = fetch(rot_scale_tex, 2 * idx);
  vec3 s = fetch(rot_scale_tex, 2 * idx + 1).xyz * scale_mod;
  float qw = q.x, qx = q.y, qy = q.z, qz = q.w;
  mat3 rot = mat3(1.0 - 2.0 * (qy * qy + qz * qz), 2.0 * (qx * qy + qw * qz), 2.0 * (qx * qz - qw * qy),
                  2.0 * (qx * qy - qw * qz), 1.0 - 2.0 * (qx * qx + qz * qz), 2.0 * (qy * qz + qw * qx),
                  2.0 * (qx * qz + qw * qy), 2.0 * (qy * qz - qw * qx), 1.0 - 2.0 * (qx * qx + qy * qy));
  mat3 m = mat3(rot[0] * s.x, rot[1] * s.y, rot[2] * s.z);
  mat3 cov = m * transpose(m);
  mat3 w = mat3(model_view);
  w = mat3(w[0] * vec3(1.0, -1.0, -1.0), w[1] * vec3(1.0, -1.0, -1.0), w[2] * vec3(1.0, -1.0, -1.0));
  mat3 cov_c = w * cov * transpose(w);

  /* pinhole intrinsics (pixels, OpenCV image axes) of the projection matrix */
  float fx = 0.5 * viewport.x * proj[0][0];
  float fy = 0.5 * viewport.y * proj[1][1];
  vec3 j0, j1;
  if (ortho) {
    j0 = vec3(fx, 0.0, 0.0);
    j1 = vec3(0.0, fy, 0.0);
  } else {
    float cx = 0.5 * viewport.x * (1.0 - proj[2][0]);
    float cy = 0.5 * viewport.y * (1.0 + proj[2][1]);
    float tan_x = 0.5 * viewport.x / fx, tan_y = 0.5 * viewport.y / fy;
    float lim_xp = (viewport.x - cx) / fx + 0.3 * tan_x, lim_xn = cx / fx + 0.3 * tan_x;
    float lim_yp = (viewport.y - cy) / fy + 0.3 * tan_y, lim_yn = cy / fy + 0.3 * tan_y;
    float rz = 1.0 / t.z;
    float tx = t.z * min(lim_xp, max(-lim_xn, t.x * rz));
    float ty = t.z * min(lim_yp, max(-lim_yn, t.y * rz));
    j0 = vec3(fx * rz, 0.0, -fx * tx * rz * rz);
    j1 = vec3(0.0, fy * rz, -fy * ty * rz * rz);
  }
  float a = dot(j0, cov_c * j0) + EPS2D;
  float b = dot(j0, cov_c * j1);
  float c = dot(j1, cov_c * j1) + EPS2D;
  float det = a * c - b * b;
  if (det <= 0.0) { cull(); return; }
  float extent = min(MAX_EXTENT_SIGMAS, sqrt(2.0 * log(opacity / ALPHA_THRESHOLD)));

  /* eigen-decomposition of the 2D covariance [[a b][b c]] */
  float mid = 0.5 * (a + c);
  float r = sqrt(max(0.25 * (a - c) * (a - c) + b * b, 0.0));
  float l1 = mid + r, l2 = max(mid - r, 0.0);
  vec2 e1 = abs(b) > 1e-12 * max(a, c) ? normalize(vec2(b, l1 - a)) : (a >= c ? vec2(1.0, 0.0) : vec2(0.0, 1.0));
  vec2 e2 = vec2(-e1.y, e1.x);
  vec2 offset = corner.x * extent * sqrt(l1) * e1 + corner.y * extent * sqrt(l2) * e2;   /* pixels, y down */

  vec4 clip = proj * t4;
  gl_Position = clip + vec4(2.0 * offset.x / viewport.x, -2.0 * offset.y / viewport.y, 0.0, 0.0) * clip.w;
  v_offset = offset;
  v_conic = vec3(c, -b, a) / det;

  vec3 dir = normalize(center.xyz - campos_local);
  v_color = vec4(shade(idx, sh_color(idx, dir, sh_degree)), opacity);
}
"""

SPLAT_FRAG = """
void main() {
  vec2 d = v_offset;
  float power = -0.5 * (v_conic.x * d.x * d.x + v_conic.z * d.y * d.y) - v_conic.y * d.x * d.y;
  if (power > 0.0) { discard; }
  float alpha = min(ALPHA_MAX, v_color.a * exp(power));
  if (alpha < ALPHA_THRESHOLD) { discard; }
  FragColor = vec4(to_framebuffer_space(v_color.rgb) * alpha, alpha);
}
"""

POINT_VERT = """
void main() {
  int idx = gl_InstanceID;
  vec4 center = fetch(center_tex, idx);
  if (center.w < ALPHA_THRESHOLD) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); v_color = vec4(0.0); return; }
  vec4 clip = proj * (model_view * vec4(center.xyz, 1.0));
  gl_Position = clip + vec4(corner * point_size / viewport, 0.0, 0.0) * clip.w;
  vec3 dir = normalize(center.xyz - campos_local);
  v_color = vec4(shade(idx, sh_color(idx, dir, sh_degree)), 1.0);
}
"""

POINT_FRAG = """
void main() { FragColor = vec4(to_framebuffer_space(v_color.rgb), 1.0); }
"""

#: Splat colours are display (sRGB) values, as in the images they were trained on. Blender sets
#: the builtin push constant ``srgbTarget`` at bind time when the bound framebuffer stores sRGB
#: (the hardware then encodes linear shader output): decode first so that the stored value is
#: the splat's colour. Offscreen float targets leave it false: values pass through unchanged.
FRAMEBUFFER_GLSL = """
vec3 to_framebuffer_space(vec3 c) {
  if (!srgbTarget) { return c; }
  c = max(c, vec3(0.0));
  return mix(c * (1.0 / 12.92), pow((c + 0.055) * (1.0 / 1.055), vec3(2.4)), step(vec3(0.04045), c));
}
"""


#: std140 uniform block: 240 bytes (push constants are limited to 128), packed by ``pack_params``
PARAMS_STRUCT = """
struct SplatParams {
  mat4 model_view;
  mat4 proj;
  vec4 campos_local;
  vec4 viewport_scale_near;
  vec4 degree_stride;
  mat4 grade;
};
"""
PARAMS_GLSL = """
#define model_view params.model_view
#define proj params.proj
#define campos_local params.campos_local.xyz
#define viewport params.viewport_scale_near.xy
#define scale_mod params.viewport_scale_near.z
#define near_clip params.viewport_scale_near.w
#define point_size params.viewport_scale_near.z
#define sh_degree int(params.degree_stride.x + 0.5)
#define sh_stride int(params.degree_stride.y + 0.5)
#define grade_mode int(params.degree_stride.z + 0.5)
#define show_state (params.degree_stride.w > 0.5)
#define grade_m params.grade
"""


def pack_params(model_view, proj, campos_local, viewport_size, scale_or_point_size: float,
                near_clip: float, sh_degree: int, sh_stride: int, grade=None, grade_selected_only: bool = False,
                show_state: bool = False) -> bytes:
    """The ``SplatParams`` block as std140 bytes (matrices column-major). ``grade``: (A [3,3], b [3]) of
    ``shared.color_grade.grade_matrix`` applied to each splat's evaluated colour before the clamp (all
    unlocked splats, or only the selected ones); ``show_state``: tint selected and locked splats."""
    import numpy as np

    floats = np.zeros(60, np.float32)
    floats[0:16] = np.asarray(model_view, dtype=np.float64).T.reshape(-1)
    floats[16:32] = np.asarray(proj, dtype=np.float64).T.reshape(-1)
    floats[32:35] = campos_local
    floats[36:40] = (viewport_size[0], viewport_size[1], scale_or_point_size, near_clip)
    floats[40:42] = (sh_degree, sh_stride)     # small ints, exact as floats
    floats[42] = 0 if grade is None else (2 if grade_selected_only else 1)
    floats[43] = 1.0 if show_state else 0.0
    g = np.eye(4)
    if grade is not None:
        g[:3, :3] = np.asarray(grade[0], dtype=np.float64)
        g[:3, 3] = np.asarray(grade[1], dtype=np.float64)
    floats[44:60] = g.T.reshape(-1)
    return floats.tobytes()


def _defines() -> str:
    return "\n".join([
        f"const float ALPHA_THRESHOLD = {_glsl_float(ALPHA_THRESHOLD)};",
        f"const float ALPHA_MAX = {_glsl_float(ALPHA_MAX)};",
        f"const float EPS2D = {_glsl_float(EPS2D)};",
        f"const float MAX_EXTENT_SIGMAS = {_glsl_float(MAX_EXTENT_SIGMAS)};",
        "const vec3 SELECTED_TINT = vec3(1.0, 0.55, 0.1);",
        "const vec3 LOCKED_TINT = vec3(0.3, 0.3, 0.3);",
    ]) + "\n"


def _create(name: str, vert: str, frag: str, smooth_offset: bool):
    import gpu

    iface = gpu.types.GPUStageInterfaceInfo(f"splatbridge_{name}_iface")
    if smooth_offset:
        iface.smooth("VEC2", "v_offset")
        iface.flat("VEC3", "v_conic")
    iface.flat("VEC4", "v_color")

    info = gpu.types.GPUShaderCreateInfo()
    info.typedef_source(PARAMS_STRUCT)
    info.uniform_buf(0, "SplatParams", "params")
    info.push_constant("BOOL", "srgbTarget")
    info.sampler(0, "FLOAT_2D", "order_tex")
    info.sampler(1, "FLOAT_2D", "center_tex")
    info.sampler(2, "FLOAT_2D", "rot_scale_tex")
    info.sampler(3, "FLOAT_2D", "sh_tex")
    info.vertex_in(0, "VEC2", "corner")
    info.vertex_out(iface)
    info.fragment_out(0, "VEC4", "FragColor")
    info.vertex_source(_defines() + PARAMS_GLSL + COMMON_GLSL + SH_GLSL + vert)
    info.fragment_source(_defines() + FRAMEBUFFER_GLSL + frag)
    return gpu.shader.create_from_info(info)


@lru_cache(maxsize=None)
def splat_shader():
    """The Gaussian splat shader (compiled once per session; needs a GPU context)."""
    return _create("splat", SPLAT_VERT, SPLAT_FRAG, smooth_offset=True)


@lru_cache(maxsize=None)
def point_shader():
    """The point-mode shader (compiled once per session; needs a GPU context)."""
    return _create("point", POINT_VERT, POINT_FRAG, smooth_offset=False)


@lru_cache(maxsize=None)
def quad_batch(kind: str):
    """The 4-vertex triangle-strip quad (corners -1..1) instanced once per splat."""
    from gpu_extras.batch import batch_for_shader

    shader = splat_shader() if kind == "splat" else point_shader()
    return batch_for_shader(shader, "TRI_STRIP", {"corner": [(-1, -1), (1, -1), (-1, 1), (1, 1)]})
