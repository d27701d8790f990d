"""Per-object viewport display settings of splat objects (``Object.splatbridge_display``)."""
from __future__ import annotations

from dataclasses import dataclass

try:
    import bpy
    from bpy.props import BoolProperty, FloatProperty, IntProperty, PointerProperty
except ImportError:  # pragma: no cover
    bpy = None

PROP_NAME = "splatbridge_display"


@dataclass(frozen=True)
class DisplaySettings:
    """What the draw code needs; the defaults apply when the property group is not registered."""

    show: bool = True
    sh_degree: int = 3          # highest SH band drawn (limited by the data's degree)
    scale: float = 1.0          # multiplier on every splat's standard deviations
    point_mode: bool = False    # opaque unsorted squares: for sets too large to sort interactively
    point_size: float = 3.0     # pixels, point mode only


def display_settings(obj) -> DisplaySettings:
    """The display settings of ``obj`` (defaults when none are stored or not registered)."""
    group = getattr(obj, PROP_NAME, None)
    if group is None:
        return DisplaySettings()
    return DisplaySettings(bool(group.show), int(group.sh_degree), float(group.scale),
                           bool(group.point_mode), float(group.point_size))


if bpy is not None:
    def _redraw(self, context) -> None:
        for window in getattr(context.window_manager, "windows", []):
            for area in window.screen.areas:
                if area.type == "VIEW_3D":
                    area.tag_redraw()

    class SPLATBRIDGE_PG_display(bpy.types.PropertyGroup):
        """Viewport display of one splat object."""

        show: BoolProperty(name="Show Splats", default=True, update=_redraw,
                           description="Draw this object's Gaussian splats in the 3D viewport")
        sh_degree: IntProperty(name="SH Degree", default=3, min=0, max=3, update=_redraw,
                               description="Highest spherical-harmonics band used for view-dependent colour")
        scale: FloatProperty(name="Splat Scale", default=1.0, min=0.01, soft_max=2.0, max=10.0,
                             update=_redraw, description="Multiplier on every splat's size (display only)")
        point_mode: BoolProperty(name="Point Mode", default=False, update=_redraw,
                                 description="Draw splats as small opaque points without sorting "
                                             "(fast for very large sets)")
        point_size: FloatProperty(name="Point Size", default=3.0, min=1.0, max=20.0, subtype="PIXEL",
                                  update=_redraw, description="Point size in pixels (point mode)")


def register() -> None:
    bpy.utils.register_class(SPLATBRIDGE_PG_display)
    setattr(bpy.types.Object, PROP_NAME, PointerProperty(type=SPLATBRIDGE_PG_display))


def unregister() -> None:
    if hasattr(bpy.types.Object, PROP_NAME):
        delattr(bpy.types.Object, PROP_NAME)
    if getattr(SPLATBRIDGE_PG_display, "is_registered", False):
        bpy.utils.unregister_class(SPLATBRIDGE_PG_display)
