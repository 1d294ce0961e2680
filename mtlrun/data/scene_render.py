"""The ray caster behind `data=scenes`: random rooms (mtlrun.data.scenes) rendered with per-pixel labels.

Each image is a ray-cast view of a room: a floor plane (checkerboard texture, so its depth gradient is
visible), a back wall (striped) and objects standing on the floor: spheres, boxes (rotated about the
vertical) and upright cylinders, at different distances. A z-buffer keeps the nearest surface at every
pixel, so nearer objects occlude farther ones; surfaces are Lambert-shaded from a random light direction.
Camera height, downward tilt, wall distance, light, colours and objects are drawn per scene; colours do not
depend on the object kind, so the class has to be read from the shape.

Camera: a pinhole at the origin with a 60 degree horizontal field of view and square pixels. Camera
frame (the frame of depth and normals): x right, y down, z forward (the viewing direction), in metres.

Rendering is vectorised over the pixels and scenes of a call (a loop over the few object slots only).
`depth_sensor` simulates a structured-light depth camera reading the true depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = ("floor", "wall", "sphere", "box", "cylinder")
SHAPES = ("sphere", "box", "cylinder")  # shape kind k has the class id SHAPE_CLASS + k
SHAPE_CLASS = 2
FIELD_OF_VIEW = 60.0  # horizontal, degrees
SENSOR_RANGE = 10.0  # metres: a simulated depth reading farther than this is 0
EDGE_JUMP = 0.25  # metres: a depth step this large to a 4-neighbour makes an edge pixel
AMBIENT = 0.35
TILE = 0.5  # floor checkerboard, metres
NO_HIT = float("inf")


@dataclass
class SceneParams:
    """N scenes, in the world frame: camera at the origin, x right, y down, z forward and horizontal.

    The camera looks along z tilted down by `pitch`; the floor is the plane y = camera_height, the back
    wall the plane z = wall_distance. Objects sit in K slots (kind -1 = empty slot).
    """

    camera_height: torch.Tensor  # [N]
    pitch: torch.Tensor  # [N] radians, > 0 looks down
    wall_distance: torch.Tensor  # [N]
    light: torch.Tensor  # [N, 3] unit vector towards the light
    floor_colors: torch.Tensor  # [N, 2, 3] the two checkerboard albedos
    wall_color: torch.Tensor  # [N, 3]
    kind: torch.Tensor  # long [N, K]: index into SHAPES, -1 = empty
    center: torch.Tensor  # [N, K, 3]: sphere and box centre; cylinder: middle of its axis
    size: torch.Tensor  # [N, K, 3]: sphere (r, r, r); box half extents; cylinder (r, half height, r)
    yaw: torch.Tensor  # [N, K] rotation of a box about the vertical (radians)
    color: torch.Tensor  # [N, K, 3] albedo

    def __len__(self) -> int:
        return len(self.camera_height)

    def slice(self, start: int, stop: int) -> SceneParams:
        return SceneParams(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})


def focal_length(width: int) -> float:
    return 0.5 * width / math.tan(math.radians(FIELD_OF_VIEW) / 2)


def sample_scenes(n: int, rng: np.random.Generator, min_shapes: int, max_shapes: int) -> SceneParams:
    """Random scenes: objects stand on the floor, in front of the wall, roughly inside the view."""
    def u(lo, hi, *shape):
        return rng.uniform(lo, hi, size=(n, *shape))

    height, pitch, wall = u(1.2, 1.8), u(0.12, 0.35), u(6.0, 10.0)
    light = np.stack([u(-1, 1), -u(1, 2), -u(0.2, 1)], axis=1)  # from above, on the camera's side
    light /= np.linalg.norm(light, axis=1, keepdims=True)
    floor_a = u(0.25, 0.85, 3)
    floor_colors = np.stack([floor_a, floor_a * u(0.55, 0.8, 1)], axis=1)
    k = max_shapes
    count = rng.integers(min_shapes, max_shapes + 1, size=n)
    kind = np.where(np.arange(k) < count[:, None], rng.integers(0, len(SHAPES), size=(n, k)), -1)
    sphere, box, cylinder = (kind == SHAPES.index(s) for s in ("sphere", "box", "cylinder"))
    size = np.full((n, k, 3), 0.5)  # metres; every draw is made whatever the kind, so kinds don't shift streams
    radius = u(0.35, 0.8, k)
    size[sphere] = np.repeat(radius[..., None], 3, axis=2)[sphere]
    size[box] = np.stack([u(0.3, 0.7, k), u(0.3, 0.8, k), u(0.3, 0.7, k)], axis=2)[box]
    cyl_r, cyl_h = u(0.25, 0.5, k), u(0.4, 0.9, k)
    size[cylinder] = np.stack([cyl_r, cyl_h, cyl_r], axis=2)[cylinder]
    z = 2.2 + u(0, 1, k) ** 2 * (wall[:, None] - 1.2 - 2.2)  # more often near the camera
    half_view = math.tan(math.radians(FIELD_OF_VIEW) / 2)
    x = u(-0.8, 0.8, k) * z * half_view
    y = height[:, None] - size[..., 1]  # resting on the floor
    return SceneParams(
        camera_height=_t(height), pitch=_t(pitch), wall_distance=_t(wall), light=_t(light),
        floor_colors=_t(floor_colors), wall_color=_t(u(0.3, 0.9, 3)), kind=torch.from_numpy(kind).long(),
        center=_t(np.stack([x, y, z], axis=2)), size=_t(size), yaw=_t(u(0, math.pi / 2, k)),
        color=_t(u(0.15, 0.95, k, 3)))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def camera_axes(pitch: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3]: rows are the camera's x, y, z axes in world coordinates (camera tilted down by pitch)."""
    c, s = torch.cos(pitch), torch.sin(pitch)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([torch.stack([one, zero, zero], -1),
                        torch.stack([zero, c, -s], -1),
                        torch.stack([zero, s, c], -1)], dim=1)


def camera_rays(height: int, width: int) -> torch.Tensor:
    """[H * W, 3] ray directions in the camera frame through the pixel centres, with z = 1."""
    f = focal_length(width)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    return torch.stack([(u + 0.5 - width / 2) / f, (v + 0.5 - height / 2) / f, torch.ones_like(u)], -1).view(-1, 3)


def _plane(d: torch.Tensor, axis: int, offset: torch.Tensor) -> torch.Tensor:
    """t where rays from the origin meet the plane p[axis] = offset (inf if never, forwards)."""
    t = offset[:, None] / d[..., axis]
    return torch.where(torch.isfinite(t) & (t > 0), t, NO_HIT)


# Ray-object tests. Rays start at the origin; d [M, 3] holds one ray per row and every parameter has one
# row per ray too (gathered for the candidate pixels), so each test is a handful of vector operations.
# Each returns (t [M], inf where missed; normal [M, 3] in the world frame, facing the ray's origin).


def _sphere(d, center, size, yaw):
    radius = size[:, 0]
    a = d.square().sum(-1)
    b = (d * center).sum(-1)
    c = center.square().sum(-1) - radius.square()
    disc = b.square() - a * c
    t = (b - disc.clamp_min(0).sqrt()) / a
    t = torch.where((disc >= 0) & (t > 0), t, NO_HIT)
    normal = (t.clamp_max(1e6)[:, None] * d - center) / radius[:, None]
    return t, normal


def _box(d, center, half, yaw):
    """Slab test in the box's own frame (rotated by yaw about the vertical)."""
    cos, sin = torch.cos(yaw), torch.sin(yaw)

    def to_local(v):  # the inverse of the yaw rotation
        return torch.stack([cos * v[:, 0] - sin * v[:, 2], v[:, 1], sin * v[:, 0] + cos * v[:, 2]], -1)

    d_local, o_local = to_local(d), -to_local(center)
    d_safe = torch.where(d_local.abs() < 1e-12, torch.where(d_local >= 0, 1e-12, -1e-12), d_local)
    t1, t2 = (-half - o_local) / d_safe, (half - o_local) / d_safe
    t_near, axis = torch.minimum(t1, t2).max(-1)
    t_far = torch.maximum(t1, t2).min(-1).values
    t = torch.where((t_near <= t_far) & (t_near > 0), t_near, NO_HIT)
    n_local = F.one_hot(axis, 3).to(d.dtype) * -torch.sign(d_local.gather(-1, axis[:, None]))
    normal = torch.stack([cos * n_local[:, 0] + sin * n_local[:, 2], n_local[:, 1],
                          -sin * n_local[:, 0] + cos * n_local[:, 2]], -1)
    return t, normal


def _cylinder(d, center, size, yaw):
    """Upright cylinder: its side (a quadratic in x, z) and its two caps, the nearest hit kept."""
    radius, half_height = size[:, 0], size[:, 1]
    cx, cy, cz = center.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    a = dx.square() + dz.square()
    b = cx * dx + cz * dz  # minus half of the linear coefficient
    c = cx.square() + cz.square() - radius.square()
    disc = b.square() - a * c
    t_side = (b - disc.clamp_min(0).sqrt()) / a
    y = t_side * dy
    side = (disc >= 0) & (t_side > 0) & (y >= cy - half_height) & (y <= cy + half_height)
    t = torch.where(side, t_side, NO_HIT)
    tc = t.clamp_max(1e6)
    normal = torch.stack([(tc * dx - cx) / radius, torch.zeros_like(dx), (tc * dz - cz) / radius], -1)
    for cap_y, ny in ((cy - half_height, -1.0), (cy + half_height, 1.0)):
        t_cap = cap_y / dy
        inside = (t_cap * dx - cx).square() + (t_cap * dz - cz).square() <= radius.square()
        cap = torch.isfinite(t_cap) & (t_cap > 0) & inside & (t_cap < t)
        t = torch.where(cap, t_cap, t)
        normal = torch.where(cap[:, None], d.new_tensor([0.0, ny, 0.0]), normal)
    return t, normal


HIT_TESTS = (_sphere, _box, _cylinder)  # in SHAPES order


def bounding_radius(kind: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Radius of a sphere around each object's centre that contains it (0 for an empty slot)."""
    if kind.shape[-1] == 0:
        return size.new_zeros(kind.shape)
    radius = torch.stack([size[..., 0], size.norm(dim=-1), size[..., :2].norm(dim=-1)], -1)
    return torch.where(kind >= 0, radius.gather(-1, kind.clamp_min(0)[..., None]).squeeze(-1), 0.0)


def render(scenes: SceneParams, height: int, width: int) -> dict[str, torch.Tensor]:
    """Ray-cast `scenes` without noise.

    Returns image float [N, 3, H, W] in [0, 1], segmentation long [N, H, W], depth float [N, 1, H, W]
    (camera z, metres), normals float [N, 3, H, W] (unit, camera frame, facing the camera) and instances
    long [N, H, W] (the object slot seen at each pixel, -1 for floor and wall).
    The objects are tested only on the pixels whose ray meets their bounding sphere (a few percent).
    """
    n, k = scenes.kind.shape
    p = height * width
    axes = camera_axes(scenes.pitch)  # [N, 3, 3]
    d = torch.einsum("pc,ncw->npw", camera_rays(height, width), axes)  # world directions; camera z = t
    # background: floor, then the wall where it is nearer
    t = _plane(d, 1, scenes.camera_height)
    t_wall = _plane(d, 2, scenes.wall_distance)
    cls = (t_wall < t).long()
    t = torch.minimum(t, t_wall)
    normal = torch.where((cls == 1)[..., None], d.new_tensor([0.0, 0.0, -1.0]), d.new_tensor([0.0, -1.0, 0.0]))
    slot = torch.full_like(cls, -1)
    # objects, one slot at a time: a z-buffer keeps the nearest hit
    t, cls, normal, slot = t.reshape(-1), cls.reshape(-1), normal.reshape(-1, 3), slot.reshape(-1)
    d = d.reshape(-1, 3).contiguous()
    d_norm2 = d.square().sum(-1).view(n, p)
    bound = bounding_radius(scenes.kind, scenes.size)
    for j in range(k):
        center = scenes.center[:, j]
        along = torch.bmm(d.view(n, p, 3), center[:, :, None]).squeeze(-1)  # d . c
        room = center.square().sum(-1) - bound[:, j].square()  # |c|^2 - R^2 (< 0: camera inside)
        near = (room[:, None] < 0) | ((along > 0) & (along.square() >= d_norm2 * room[:, None]))
        near &= (scenes.kind[:, j] >= 0)[:, None]
        pixel = near.view(-1).nonzero().squeeze(1)
        sample = pixel // p
        kind = scenes.kind[sample, j]
        for shape, hit_test in enumerate(HIT_TESTS):
            rows = (kind == shape).nonzero().squeeze(1)
            px, sm = pixel[rows], sample[rows]
            t_obj, n_obj = hit_test(d[px], center[sm], scenes.size[sm, j], scenes.yaw[sm, j])
            nearer = t_obj < t[px]
            px, t_obj, n_obj = px[nearer], t_obj[nearer], n_obj[nearer]
            t[px], cls[px], slot[px], normal[px] = t_obj, SHAPE_CLASS + shape, j, n_obj
    t, cls, slot, normal, d = t.view(n, p), cls.view(n, p), slot.view(n, p), normal.view(n, p, 3), d.view(n, p, 3)
    normal = F.normalize(normal, dim=-1)
    # albedo: checkerboard floor, striped wall, plain objects
    point = t[..., None] * d
    checker = ((point[..., 0] / TILE).floor() + (point[..., 2] / TILE).floor()).remainder(2).long()
    floor = scenes.floor_colors.gather(1, checker[..., None].expand(-1, -1, 3))
    stripes = 0.85 + 0.15 * torch.sin(point[..., 0] * (2 * math.pi / 0.7))[..., None]
    wall = scenes.wall_color[:, None] * stripes
    obj = scenes.color.gather(1, slot.clamp_min(0)[..., None].expand(-1, -1, 3)) if k else floor
    albedo = torch.where((cls == 0)[..., None], floor, torch.where((cls == 1)[..., None], wall, obj))
    shade = AMBIENT + (1 - AMBIENT) * (normal * scenes.light[:, None]).sum(-1).clamp_min(0)
    image = (albedo * shade[..., None]).clamp(0, 1)
    normal_camera = torch.einsum("npw,ncw->npc", normal, axes)

    def grid(x, channels):
        return x.reshape(n, height, width, channels).permute(0, 3, 1, 2).contiguous()

    return {"image": grid(image, 3), "segmentation": cls.view(n, height, width),
            "depth": grid(t[..., None], 1), "normals": grid(normal_camera, 3),
            "instances": slot.view(n, height, width)}


def visible_boxes(instances: torch.Tensor, kind: torch.Tensor, min_area: int) -> torch.Tensor:
    """The 2-D box of every object from the pixels where it is seen (so occlusion counts): float [N, K, 5]
    rows (x1, y1, x2, y2, shape kind) covering pixels x1 <= x < x2, y1 <= y < y2 (mtlrun.detection's target
    layout); an object seen at fewer than `min_area` pixels, and an empty slot, is a padding row (kind -1)."""
    n, k = kind.shape
    out = torch.full((n, k, 5), -1.0)
    out[..., :4] = 0.0
    for j in range(k):  # a loop over the few slots; vectorised over the scenes and pixels
        seen = instances == j  # [N, H, W]
        cols, rows = seen.any(1), seen.any(2)  # [N, W], [N, H]
        keep = seen.flatten(1).sum(1) >= max(1, min_area)
        x = torch.arange(cols.shape[1])
        y = torch.arange(rows.shape[1])
        x1 = torch.where(cols, x, cols.shape[1]).min(1).values
        x2 = torch.where(cols, x, -1).max(1).values + 1
        y1 = torch.where(rows, y, rows.shape[1]).min(1).values
        y2 = torch.where(rows, y, -1).max(1).values + 1
        box = torch.stack([x1, y1, x2, y2, kind[:, j]], 1).float()
        out[:, j] = torch.where(keep[:, None], box, out[:, j])
    return out


def depth_sensor(depth: torch.Tensor, rng: np.random.Generator, noise: float, dropout: float) -> torch.Tensor:
    """A noisy depth camera reading of true depth [N, 1, H, W]: 0 where there is no reading."""
    reading = depth + noise * depth.square() * torch.from_numpy(rng.standard_normal(depth.shape, dtype=np.float32))
    jump = torch.zeros_like(depth, dtype=torch.bool)
    for dim in (2, 3):
        step = (depth.diff(dim=dim).abs() > EDGE_JUMP).float()
        pad_before = [0, 0, 1, 0] if dim == 2 else [1, 0, 0, 0]
        pad_after = [0, 0, 0, 1] if dim == 2 else [0, 1, 0, 0]
        jump |= (F.pad(step, pad_before) + F.pad(step, pad_after)) > 0
    lost = torch.from_numpy(rng.random(depth.shape, dtype=np.float32))
    missing = (lost < dropout) | (jump & (lost > 0.5)) | (reading > SENSOR_RANGE) | (reading <= 0)
    return torch.where(missing, 0.0, reading)
