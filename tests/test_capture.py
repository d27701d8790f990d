"""Capture: renders of a rig (alpha mask, colour, cameras) and surface samples with colours.

Real headless Cycles renders at 32x32; masks are checked against Blender's own ray casts through
the pixel centres of the shared-convention cameras, which also checks the camera conversion."""
from __future__ import annotations

import os

import numpy as np
import pytest

from helpers import node_material

pytestmark = [pytest.mark.blender, pytest.mark.bpy_only]

EMIT = (0.8, 0.2, 0.1)       # linear emission colour of the test cube


@pytest.fixture
def mods(addon_dir, bpy_empty):
    from splatbridge import capture, rig
    rig.register()
    yield rig, capture
    rig.unregister()


def _emission_material(bpy, color):
    mat = node_material(bpy, "emit")
    nt = mat.node_tree
    for n in list(nt.nodes):
        nt.nodes.remove(n)
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    em = nt.nodes.new("ShaderNodeEmission")
    em.inputs["Color"].default_value = (*color, 1.0)
    em.inputs["Strength"].default_value = 1.0
    nt.links.new(em.outputs["Emission"], out.inputs["Surface"])
    return mat


def _principled(bpy, color, name="p"):
    mat = node_material(bpy, name)
    mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*color, 1.0)
    return mat


def _cube_scene(bpy, rig, res=32, count=4):
    bpy.ops.mesh.primitive_cube_add(location=(0.3, -0.2, 0.1), rotation=(0.4, 0.2, 0.7))
    cube = bpy.context.active_object
    cube.scale = (0.6, 0.6, 0.6)
    cube.data.materials.append(_emission_material(bpy, EMIT))
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 16
    scene.cycles.device = "CPU"
    scene.cycles.use_denoising = False        # exact flat colours for the checks below
    bpy.ops.splatbridge.add_camera_rig(layout_kind="HEMISPHERE", count=count, elev_min=10,
                                       elev_max=70, resolution=(res, res), margin=1.6)
    return cube, rig.find_rig(bpy.context)


def _ray_mask(bpy, cam, obj):
    """True where the ray through a pixel centre hits ``obj`` (Blender's ray cast)."""
    from mathutils import Vector
    scene = bpy.context.scene
    dg = bpy.context.evaluated_depsgraph_get()
    r = cam.world_to_camera[:3, :3]
    hit = np.zeros((cam.height, cam.width), bool)
    origin = Vector(cam.position)
    for j in range(cam.height):
        for i in range(cam.width):
            d = np.array([(i + 0.5 - cam.cx) / cam.fx, (j + 0.5 - cam.cy) / cam.fy, 1.0])
            ok, _, _, _, o, _ = scene.ray_cast(dg, origin, Vector(r.T @ d))
            hit[j, i] = ok and o is not None and o.name == obj.name
    return hit


def _erode(m):
    """True where the pixel and its 8 neighbours are all True."""
    p = np.pad(m, 1, constant_values=False)
    out = np.ones_like(m)
    for dy in range(3):
        for dx in range(3):
            out &= p[dy:dy + m.shape[0], dx:dx + m.shape[1]]
    return out


def test_capture_alpha_colour_and_cameras(mods, artifacts):
    rig, capture = mods
    import bpy
    from PIL import Image
    from splatbridge.shared.cameras import cameras_from_arrays
    cube, rg = _cube_scene(bpy, rig)
    scene = bpy.context.scene
    # Settings the capture changes must come back.
    scene.render.film_transparent = False
    scene.render.resolution_x, scene.render.resolution_y = 100, 50
    scene.view_settings.view_transform = "AgX"
    scene.camera = None

    job = capture.CaptureJob(bpy.context, rg, num_points=500)
    res = job.run_all()
    assert res.images.shape == (4, 32, 32, 4) and res.images.dtype == np.uint8
    assert res.viewmats.shape == (4, 4, 4) and res.Ks.shape == (4, 3, 3)
    assert (scene.render.film_transparent, scene.render.resolution_x, scene.render.resolution_y,
            scene.view_settings.view_transform, scene.camera) == (False, 100, 50, "AgX", None)
    Image.fromarray(np.concatenate(list(res.images), axis=1)).save(artifacts / "capture_views.png")

    srgb = capture.to_u8(capture.linear_to_srgb(np.array(EMIT)))
    for cam, img in zip(cameras_from_arrays(res.viewmats, res.Ks, 32, 32), res.images):
        hit = _ray_mask(bpy, cam, cube)
        # Two pixels from the silhouette: Cycles' pixel filter (Blackman-Harris, filter_width 1.5)
        # lets a sample land beyond the 8 neighbours, so with one ring a sliver of the cube can
        # reach an "outside" pixel depending on the sampling pattern (bpy 5.2+'s default,
        # AUTOMATIC, samples like BLUE_NOISE, not 5.0's TABULATED_SOBOL, and did exactly that).
        inside, outside = _erode(_erode(hit)), _erode(_erode(~hit))
        assert inside.sum() > 30 and outside.sum() > 100      # the cube is framed, with background
        assert (img[..., 3][inside] == 255).all()
        assert (img[..., 3][outside] == 0).all()
        # Straight alpha, Standard view: the emission colour exactly (sRGB), not darkened at all.
        assert np.abs(img[..., :3][inside].astype(int) - srgb).max() <= 2

    # Surface samples coloured from the views: the emission colour as rendered.
    assert res.points.shape == (500, 3) and res.colors.shape == (500, 3)
    assert np.abs(res.colors.astype(int) - srgb).max() <= 2

    # The same view rendered directly by Blender (Render Result saved, read back with PIL).
    scene.camera = rig.rig_cameras(rg)[1]
    scene.render.resolution_x = scene.render.resolution_y = 32
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    bpy.ops.render.render()
    path = str(artifacts / "capture_direct.png")
    bpy.data.images["Render Result"].save_render(path)
    direct = np.asarray(Image.open(path).convert("RGBA"))
    assert np.abs(direct.astype(int) - res.images[1]).max() <= 1


def test_capture_job_steps_progress_and_cancel(mods):
    rig, capture = mods
    import bpy
    cube, rg = _cube_scene(bpy, rig, res=16, count=3)
    job = capture.CaptureJob(bpy.context, rg, samples=4, num_points=0)
    assert job.total == 3 and job.progress == 0.0 and np.isnan(job.eta_s)
    assert "view 1/3" in job.status_text()
    with pytest.raises(RuntimeError, match=r"not finished \(0/3 views\)"):
        job.result()
    assert job.step() is False
    assert job.done == 1 and job.eta_s > 0 and "view 2/3" in job.status_text()
    tmp = job._tmp
    job.cancel()
    assert not os.path.exists(tmp)
    with pytest.raises(RuntimeError, match="capture was cancelled"):
        job.step()
    with pytest.raises(ValueError, match="point_colors must be 'RENDER' or 'MATERIAL'"):
        capture.CaptureJob(bpy.context, rg, point_colors="VERTEX")
    with pytest.raises(ValueError, match="is not a SplatBridge camera rig"):
        capture.CaptureJob(bpy.context, cube)
    # No target meshes: the payload has no points.
    res = capture.CaptureJob(bpy.context, rg, samples=4, num_points=0).run_all()
    assert set(res.payload()) == {"images", "viewmats", "Ks"}


def test_surface_samples_area_weighted_with_base_colours(mods):
    _, capture = mods
    import bpy
    bpy.ops.mesh.primitive_plane_add(size=2.0, location=(0, 0, 0))
    big = bpy.context.active_object
    big.data.materials.append(_principled(bpy, (0.0, 0.0, 1.0), "blue"))
    bpy.ops.mesh.primitive_plane_add(size=1.0, location=(0, 0, 5))
    small = bpy.context.active_object
    small.data.materials.append(_principled(bpy, (1.0, 0.0, 0.0), "red"))
    pts, cols = capture.sample_surface(bpy.context, [big, small], 8000, seed=1)
    assert pts.shape == (8000, 3) and pts.dtype == np.float32 and cols.dtype == np.uint8
    on_small = np.abs(pts[:, 2] - 5.0) < 1e-5
    assert (on_small | (np.abs(pts[:, 2]) < 1e-5)).all()
    assert on_small.mean() == pytest.approx(1.0 / 5.0, abs=0.02)       # areas 4 : 1
    assert (np.abs(pts[~on_small, :2]) <= 1.0 + 1e-5).all()
    assert (np.abs(pts[on_small, :2]) <= 0.5 + 1e-5).all()
    assert (cols[on_small] == (255, 0, 0)).all() and (cols[~on_small] == (0, 0, 255)).all()
    # Uniform over the big plane: each quadrant gets about a quarter.
    q = (pts[~on_small, 0] > 0) * 2 + (pts[~on_small, 1] > 0)
    assert np.bincount(q, minlength=4) / (~on_small).sum() == pytest.approx([0.25] * 4, abs=0.03)


def test_surface_samples_transformed_mesh_lie_on_surface(mods):
    _, capture = mods
    import bpy
    bpy.ops.mesh.primitive_cube_add(location=(1.0, 2.0, 3.0), rotation=(0.5, 0.1, -0.3))
    cube = bpy.context.active_object
    cube.scale = (0.5, 2.0, 1.0)
    bpy.context.view_layer.update()
    pts, cols = capture.sample_surface(bpy.context, [cube], 2000)
    inv = np.linalg.inv(np.array(cube.matrix_world))
    local = pts.astype(np.float64) @ inv[:3, :3].T + inv[:3, 3]
    np.testing.assert_allclose(np.abs(local).max(axis=1), 1.0, atol=1e-5)    # on a face
    assert (cols == 231).all()          # no material: Blender's default 0.8 linear grey, sRGB 8-bit


def test_surface_samples_vertex_colours_and_image_texture(mods):
    _, capture = mods
    import bpy
    # Corner colour attribute: black at x=-1, white at x=+1; linear interpolation in linear space.
    bpy.ops.mesh.primitive_plane_add(size=2.0)
    plane = bpy.context.active_object
    me = plane.data
    attr = me.color_attributes.new("Col", "FLOAT_COLOR", "CORNER")
    for li, loop in enumerate(me.loops):
        x = me.vertices[loop.vertex_index].co.x
        attr.data[li].color = (*([(x + 1) / 2] * 3), 1.0)
    mat = _principled(bpy, (0.0, 1.0, 0.0), "vc")
    nt = mat.node_tree
    vc = nt.nodes.new("ShaderNodeVertexColor")
    vc.layer_name = "Col"
    nt.links.new(vc.outputs["Color"], nt.nodes["Principled BSDF"].inputs["Base Color"])
    me.materials.append(mat)
    pts, cols = capture.sample_surface(bpy.context, [plane], 3000)
    want = capture.to_u8(capture.linear_to_srgb((pts[:, 0:1].astype(np.float64) + 1) / 2)).repeat(3, 1)
    assert np.abs(cols.astype(int) - want).max() <= 1

    # Image texture on the default UVs: a 2x2 image, one colour per quadrant.
    bpy.ops.mesh.primitive_plane_add(size=2.0, location=(0, 0, 3))
    tplane = bpy.context.active_object
    img = bpy.data.images.new("quad", 2, 2)
    quad = np.array([[[1, 0, 0, 1], [0, 1, 0, 1]],      # bottom row: red, green
                     [[0, 0, 1, 1], [1, 1, 1, 1]]],     # top row: blue, white
                    dtype=np.float32)
    img.pixels.foreach_set(quad.ravel())
    tmat = _principled(bpy, (0.0, 0.0, 0.0), "tex")
    tex = tmat.node_tree.nodes.new("ShaderNodeTexImage")
    tex.image = img
    tmat.node_tree.links.new(tex.outputs["Color"], tmat.node_tree.nodes["Principled BSDF"].inputs["Base Color"])
    tplane.data.materials.append(tmat)
    pts, cols = capture.sample_surface(bpy.context, [tplane], 2000, seed=3)
    idx = (pts[:, 1] > 0.0).astype(int) * 2 + (pts[:, 0] > 0).astype(int)   # row*2 + col
    expected = (quad.reshape(4, 4)[:, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(cols, expected[idx])


def test_material_colour_source_kinds(mods):
    _, capture = mods
    import bpy
    assert capture.material_color_source(None) == ("const", capture.DEFAULT_GREY)
    m = _principled(bpy, (0.1, 0.2, 0.3))
    kind, val = capture.material_color_source(m)
    assert kind == "const" and val == pytest.approx((0.1, 0.2, 0.3))
    # A shader the sampler does not read: the viewport display colour.
    g = node_material(bpy, "glass")
    g.diffuse_color = (0.5, 0.4, 0.3, 1.0)
    nt = g.node_tree
    nt.nodes.remove(nt.nodes["Principled BSDF"])
    glass = nt.nodes.new("ShaderNodeBsdfGlass")
    nt.links.new(glass.outputs[0], nt.nodes["Material Output"].inputs["Surface"])
    kind, val = capture.material_color_source(g)
    assert kind == "const" and val == pytest.approx((0.5, 0.4, 0.3))


def _colors_from_views_per_point(bpy, points, normals, images, cameras, colors, tries=4):
    """Brute-force reference of ``capture.colors_from_views``: one projection and one ray cast
    per point and candidate camera, straight from its docstring."""
    from mathutils import Vector
    out = np.array(colors, dtype=np.uint8, copy=True)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    h, w = images.shape[1:3]
    for p, (pt, nrm) in enumerate(zip(points.astype(np.float64), normals)):
        to_cam = [c.position - pt for c in cameras]
        facing = [abs(np.dot(v, nrm)) / np.linalg.norm(v) for v in to_cam]
        for ci in np.argsort(-np.array(facing), kind="stable")[:tries]:
            uv, z = cameras[ci].project(pt[None])
            i, j = np.floor(uv[0]).astype(int) if z[0] > 0 else (-1, -1)
            if not (0 <= i < w and 0 <= j < h) or images[ci, j, i, 3] < 128:
                continue
            d = np.linalg.norm(to_cam[ci])
            hit, loc, *_ = bpy.context.scene.ray_cast(depsgraph, Vector(cameras[ci].position),
                                                      Vector(-to_cam[ci] / d), distance=d * 1.001)
            if hit and np.linalg.norm(np.array(loc) - pt) > 1e-3 * d + 1e-5:
                continue
            out[p] = images[ci, j, i, :3]
            break
    return out


def test_colors_from_views_match_per_point_reference(mods):
    """Point colours from the views (occlusion by a second cube, masked pixels, points outside
    some views) equal a per-point brute-force reference."""
    rig, capture = mods
    import bpy
    cube, rg = _cube_scene(bpy, rig, res=24, count=6)
    bpy.ops.mesh.primitive_cube_add(location=(0.9, 0.4, 0.3), size=0.5)     # occludes part of it
    cams = [capture.blender_camera(bpy.context.scene, c, 24, 24) for c in rig.rig_cameras(rg)]
    pts, cols, nrm = capture.sample_surface_with_normals(bpy.context, [cube], 400, 3)
    gen = np.random.default_rng(5)
    images = gen.integers(0, 256, (len(cams), 24, 24, 4), dtype=np.uint8)
    images[..., 3] = np.where(gen.random(images.shape[:3]) < 0.3, 0, 255)   # holes in the masks
    got = capture.colors_from_views(bpy.context, pts, nrm, images, cams, cols)
    want = _colors_from_views_per_point(bpy, pts, nrm, images, cams, cols)
    changed = (want != cols).any(axis=1)
    assert 0.3 < changed.mean() < 1.0          # both outcomes occur
    np.testing.assert_array_equal(got, want)


def test_splat_objects_are_left_out_of_captures_unless_asked(mods):
    """Blender renders splat objects (natively on 5.3+, through the native-render modifier before):
    a capture hides them by default, so baking a scene again does not bake its earlier splats in;
    ``include_splats`` shows them. Splat objects are never surface-sampled as targets."""
    from helpers import registered
    from splatbridge import splat_object as so
    from splatbridge.shared.splats import Splats
    rig, capture = mods
    import bpy
    cube, rg = _cube_scene(bpy, rig, res=24, count=2)
    plain = capture.CaptureJob(bpy.context, rg, samples=4, num_points=0).run_all().images
    n = 300
    rng = np.random.default_rng(1)
    base = Splats.random(n, sh_degree=0, seed=2)
    splats = Splats(rng.uniform(-0.7, 0.7, (n, 3)).astype(np.float32), base.quats,
                    np.full((n, 3), np.log(0.12), np.float32), np.full(n, 0.95, np.float32),
                    np.tile(np.array([[1.5, -1.5, 1.5]], np.float32), (n, 1)), base.shN)
    obj = so.create_splat_object(bpy.context, "Old splats", splats)
    with registered("native_render") as nr:
        if obj.type != "POINTCLOUD":
            nr.ensure_native_render(obj, True)
        hidden = capture.CaptureJob(bpy.context, rg, samples=4, num_points=0).run_all().images
        shown = capture.CaptureJob(bpy.context, rg, samples=4, num_points=0, include_splats=True).run_all().images
        assert obj.hide_render is False                              # put back after the capture
        assert np.abs(hidden.astype(int) - plain).max() <= 1, np.abs(hidden.astype(int) - plain).max()
        changed = (np.abs(shown.astype(int) - plain).max(axis=-1) > 30).mean()
        assert changed > 0.1, changed                                 # the splats do render
        for o in bpy.context.scene.objects:
            o.select_set(o in (obj, cube))
        assert capture.target_objects(bpy.context, None) == [cube]
