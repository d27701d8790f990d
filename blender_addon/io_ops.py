"""File > Import / Export of Gaussian splat files, and drag-and-drop of them into the 3D view.

Formats are those of ``shared.formats`` (3DGS PLY, SuperSplat compressed PLY, .splat, .spz v1-4,
PlayCanvas .sog or its meta.json, and, import only, .ksplat); the file content decides how a .ply
is read. Import takes several files at once and creates one splat object per file (through
``splat_object.create_splat_object``); when the files declare more than ``PROGRESS_MIN_SPLATS``
splats in all, the window manager's progress bar follows the work. Export writes the selected splat
objects (the active one included) through ``splat_object.read_splats_from_object``: one object by
default with its object transform applied; several are merged into one file, each in world space
(its own transform applied, SH rotated with it).

A file that cannot be read is reported with an ERROR naming the file and the problem, and
nothing is added to the scene: all files are read before the first object is created.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from .shared.formats import EXTENSIONS, SplatFormatError, declared_count, read_splats, write_splats
from .shared.splats import Splats
from .splat_object import create_splat_object, is_splat_object, read_splats_from_object

FILTER_GLOB = "*.ply;*.splat;*.spz;*.sog;*.ksplat;meta.json"
# .json: the SOG folder layout's meta.json (any other .json is refused with "unknown extension")
DROP_EXTENSIONS = ".ply;.splat;.spz;.sog;.ksplat;.json"
#: imports declaring more splats than this (all files together) show a progress bar
PROGRESS_MIN_SPLATS = 100_000

# (format, label, description, file extension written)
FORMAT_ITEMS: tuple[tuple[str, str, str, str], ...] = (
    ("ply", "3DGS PLY", "The reference 3D Gaussian Splatting PLY: full precision, all SH degrees", ".ply"),
    ("compressed_ply", "Compressed PLY", "SuperSplat/PlayCanvas compressed PLY: quantised in chunks of 256, "
     "about 4x smaller", ".compressed.ply"),
    ("splat", ".splat", "antimatter15 .splat: 32 bytes per splat, colour without view dependence (SH degree 0)",
     ".splat"),
    ("spz", ".spz", "Niantic .spz (version 4, zstd, unless another version is chosen): quantised, keeps SH up "
     "to degree 3", ".spz"),
    ("sog", ".sog", "PlayCanvas SOG: lossless WebP images of quantised values in one zip, about 10x smaller "
     "than PLY; SH through a palette", ".sog"),
)
FORMAT_EXTENSION = {item[0]: item[3] for item in FORMAT_ITEMS}


def object_name_for(path: str | os.PathLike) -> str:
    """Object name from a file name without its splat extension ("garden.compressed.ply" -> "garden";
    a SOG folder's "garden/meta.json" -> "garden")."""
    name = Path(path).name
    if name.lower() == "meta.json" and Path(path).parent.name:
        return Path(path).parent.name
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or name
    return Path(name).stem or name


def describe_read_error(path: str | os.PathLike, exc: BaseException) -> str:
    """A one-line user message for a failed read: the file, then what is wrong with it."""
    text = str(exc)
    name = os.fspath(path)
    if isinstance(exc, (SplatFormatError, FileNotFoundError)) or name in text:
        return f"Cannot import splats: {text}"
    if isinstance(exc, (ValueError, OSError)):
        return f"Cannot import splats: {name}: {text}"
    return f"Cannot import splats: {name}: unexpected {type(exc).__name__}: {text}"


def import_files(context: bpy.types.Context, paths: list[str],
                 progress: Callable[[float], None] | None = None) -> list[tuple[bpy.types.Object, int]]:
    """Read every file, then create one splat object per file: [(object, number of splats)].
    Raises ``ImportFailed`` with a user message on the first unreadable file, before anything
    was created. ``progress(fraction)`` (0..1), if given, is called after each file is read and
    after each object is made, weighted by the splats each file declares."""
    weights = [max(declared_count(p) or 0, 1) for p in paths]
    total = 2.0 * sum(weights)
    done = 0.0
    loaded = []
    for path, weight in zip(paths, weights):
        try:
            loaded.append((path, read_splats(path)))
        except Exception as exc:  # any reader failure is the file's problem, reported in one line
            raise ImportFailed(describe_read_error(path, exc)) from exc
        done += weight
        if progress is not None:
            progress(done / total)
    created = []
    for (path, splats), weight in zip(loaded, weights):
        created.append((create_splat_object(context, object_name_for(path), splats), len(splats.means)))
        done += weight
        if progress is not None:
            progress(done / total)
    return created


def wants_progress(paths: list[str]) -> bool:
    """Whether an import of `paths` is big enough (declared splats) for a progress bar."""
    return sum(declared_count(p) or 0 for p in paths) > PROGRESS_MIN_SPLATS


class ImportFailed(Exception):
    """An import that added nothing; the message is for the user."""


class IMPORT_SCENE_OT_splatbridge_splats(bpy.types.Operator, ImportHelper):
    """Import Gaussian splats (3DGS PLY, compressed PLY, .splat, .spz, .sog / meta.json, .ksplat) as splat
    objects, one per file"""
    bl_idname = "import_scene.splatbridge_splats"
    bl_label = "Import Gaussian Splats"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default=FILTER_GLOB, options={"HIDDEN"})
    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})

    def _paths(self) -> list[str]:
        names = [f.name for f in self.files if f.name]
        if self.directory and names:
            return [os.path.join(self.directory, n) for n in names]
        return [self.filepath] if self.filepath else []

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.directory and len(self.files):  # drag-and-drop through the FileHandler: no browser
            return self.execute(context)
        return ImportHelper.invoke(self, context, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        paths = self._paths()
        if not paths:
            self.report({"ERROR"}, "Cannot import splats: no file given")
            return {"CANCELLED"}
        wm = context.window_manager
        show = wm is not None and wants_progress(paths)
        if show:
            wm.progress_begin(0, 1000)
        try:
            created = import_files(context, paths,
                                   progress=(lambda f: wm.progress_update(int(f * 1000))) if show else None)
        except ImportFailed as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            if show:
                wm.progress_end()
        for obj in context.view_layer.objects:
            obj.select_set(False)
        for obj, _ in created:
            obj.select_set(True)
        context.view_layer.objects.active = created[-1][0]
        total = sum(n for _, n in created)
        self.report({"INFO"}, f"Imported {total} splats into {len(created)} object(s)")
        return {"FINISHED"}


class EXPORT_SCENE_OT_splatbridge_splats(bpy.types.Operator, ExportHelper):
    """Export the selected splat objects (merged into one file) as 3DGS PLY, compressed PLY, .splat, .spz or
    .sog"""
    bl_idname = "export_scene.splatbridge_splats"
    bl_label = "Export Gaussian Splats"
    bl_options = {"REGISTER"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default=FILTER_GLOB, options={"HIDDEN"})
    format: EnumProperty(
        name="Format",
        items=[(key, label, desc) for key, label, desc, _ in FORMAT_ITEMS],
        default="ply",
    )
    apply_transform: BoolProperty(
        name="Apply Object Transform",
        description="Write the splats in world space (the object's location, rotation and scale applied); "
                    "off: in the object's local space (one object only: merged objects are always written "
                    "in world space)",
        default=True,
    )
    spz_version: EnumProperty(
        name="SPZ Version",
        description="Version of the .spz container",
        items=[("4", "4 (zstd)", "The current version, the reference library's default"),
               ("3", "3 (gzip)", "For readers made before version 4")],
        default="4",
    )
    sh_rest_for_degree0: BoolProperty(
        name="Zero SH Rest for Degree 0",
        description="PLY: write 45 zero f_rest_* properties for splats without view-dependent colour, "
                    "for tools that require them",
        default=True,
    )

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return is_splat_object(context.active_object)

    def check(self, context: bpy.types.Context) -> bool:
        """Keep the file name's extension in step with the chosen format."""
        want = FORMAT_EXTENSION[self.format]
        path = self.filepath
        base = path
        for ext in sorted(EXTENSIONS, key=len, reverse=True):
            if base.lower().endswith(ext):
                base = base[: -len(ext)]
                break
        new = base + want
        if new != path:
            self.filepath = new
            return True
        return False

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if not self.filepath and context.active_object is not None:
            self.filepath = bpy.path.ensure_ext(context.active_object.name, FORMAT_EXTENSION[self.format])
        return ExportHelper.invoke(self, context, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        objects = export_objects(context)
        if not objects:
            self.report({"ERROR"}, "Cannot export splats: the active object is not a splat object")
            return {"CANCELLED"}
        path = self.filepath
        if not path:
            self.report({"ERROR"}, "Cannot export splats: no file path given")
            return {"CANCELLED"}
        world = self.apply_transform or len(objects) > 1
        parts = []
        for obj in objects:
            try:
                parts.append(read_splats_from_object(obj, apply_transform=world))
            except Exception as exc:
                self.report({"ERROR"}, f"Cannot export splats: object '{obj.name}': {exc}")
                return {"CANCELLED"}
        splats = parts[0] if len(parts) == 1 else Splats.concatenate(parts)
        options = {"spz": {"version": int(self.spz_version)}, "sog": {"bundle": True},
                   "ply": {"zero_rest_for_degree0": self.sh_rest_for_degree0}}.get(self.format, {})
        # Write beside the target and rename, so a failed write never leaves half a file behind.
        partial = path + ".partial"
        try:
            write_splats(partial, splats, format=self.format, **options)
            os.replace(partial, path)
        except Exception as exc:
            if os.path.exists(partial):
                os.remove(partial)
            self.report({"ERROR"}, f"Cannot export splats to {path}: {exc}")
            return {"CANCELLED"}
        merged = f" (merged from {len(objects)} objects)" if len(objects) > 1 else ""
        self.report({"INFO"}, f"Exported {len(splats.means)} splats{merged} to {path}")
        return {"FINISHED"}


def export_objects(context: bpy.types.Context) -> list[bpy.types.Object]:
    """The splat objects to export: the active one, then the other selected splat objects (by
    name); empty when the active object is not a splat object."""
    active = context.active_object
    if not is_splat_object(active):
        return []
    others = sorted((o for o in context.selected_objects if o is not active and is_splat_object(o)),
                    key=lambda o: o.name)
    return [active] + others


class SPLATBRIDGE_FH_splats(bpy.types.FileHandler):
    """Drop splat files (.ply, .splat, .spz, .sog, a SOG meta.json, .ksplat) on the 3D view to import them."""
    bl_idname = "SPLATBRIDGE_FH_splats"
    bl_label = "Gaussian Splats"
    bl_import_operator = "import_scene.splatbridge_splats"
    bl_file_extensions = DROP_EXTENSIONS

    @classmethod
    def poll_drop(cls, context: bpy.types.Context) -> bool:
        return context.area is not None and context.area.type == "VIEW_3D"


def menu_import(self, context: bpy.types.Context) -> None:
    self.layout.operator(IMPORT_SCENE_OT_splatbridge_splats.bl_idname,
                         text="Gaussian Splats (.ply, .splat, .spz, .sog, .ksplat)")


def menu_export(self, context: bpy.types.Context) -> None:
    self.layout.operator(EXPORT_SCENE_OT_splatbridge_splats.bl_idname, text="Gaussian Splats (.ply, .splat, .spz, .sog)")


classes = (IMPORT_SCENE_OT_splatbridge_splats, EXPORT_SCENE_OT_splatbridge_splats, SPLATBRIDGE_FH_splats)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
