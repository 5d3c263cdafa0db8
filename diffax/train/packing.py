"""Few arrays per launch: the small replicated leaves of a pytree packed into one flat buffer per dtype.

Every call of a jitted function does host work for each array it takes and returns, on each device: JAX's checks
of the argument, PjRt's holds on its buffers and their events, a new array for each output. A UNet's train state
holds over a thousand arrays, most of them biases and normalization scales of a few hundred numbers, so with short
steps the host's launch can take longer than the devices' work. Packing the small leaves moves them as a handful
of buffers instead:

    packed = (buffers, rest)
    buffers[g] = concat(ravel(leaf) for each packed leaf of dtype g, in tree order)     (n_g,)
    rest       = the other leaves, as they are

A leaf is packed when it is fully replicated and holds 1 to `max_elements` numbers of a numeric dtype (not a typed
PRNG key). Large leaves stay whole: they cost a launch the same as small ones but packing would copy their bytes. Inside the jitted
step `unpack` (static slices, which XLA fuses into their consumers) and `pack` (one concatenation per dtype) are
nearly free; outside it, `packed` / `unpacked` convert whole states and pass the unpacked leaves through uncopied.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

Packed = tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]


@dataclasses.dataclass(frozen=True)
class Packing:
    """How a tree of a given structure is packed.

    Attributes:
      treedef: the tree's structure.
      dtypes: per buffer, its dtype.
      groups: per buffer, the (leaf index, shape) of the leaves it holds, in order.
      rest: indices of the leaves left whole.
      shardings: the packed form's shardings, (buffers replicated, rest as the leaves').
    """

    treedef: Any
    dtypes: tuple[np.dtype, ...]
    groups: tuple[tuple[tuple[int, tuple[int, ...]], ...], ...]
    rest: tuple[int, ...]
    shardings: tuple[tuple[NamedSharding, ...], tuple[Any, ...]]

    @classmethod
    def of(cls, abstract: Any, max_elements: int) -> Packing:
        """The packing of trees like `abstract` (ShapeDtypeStructs with NamedShardings); max_elements 0 packs
        nothing."""
        leaves, treedef = jax.tree.flatten(abstract)
        by_dtype: dict[np.dtype, list[tuple[int, tuple[int, ...]]]] = {}
        meshes: dict[np.dtype, Any] = {}
        rest = []
        for index, leaf in enumerate(leaves):
            sharding = leaf.sharding
            if (0 < math.prod(leaf.shape) <= max_elements
                    and not jnp.issubdtype(leaf.dtype, jax.dtypes.extended)
                    and isinstance(sharding, NamedSharding) and sharding.is_fully_replicated):
                by_dtype.setdefault(np.dtype(leaf.dtype), []).append((index, tuple(leaf.shape)))
                meshes.setdefault(np.dtype(leaf.dtype), sharding.mesh)
            else:
                rest.append(index)
        groups = tuple(tuple(members) for members in by_dtype.values())
        shardings = (tuple(NamedSharding(mesh, PartitionSpec()) for mesh in meshes.values()),
                     tuple(leaves[index].sharding for index in rest))
        return cls(treedef, tuple(by_dtype), groups, tuple(rest), shardings)

    @property
    def num_arrays(self) -> int:
        """Arrays in the packed form."""
        return len(self.groups) + len(self.rest)

    def pack(self, tree: Any) -> Packed:
        """tree -> (buffers, rest), traceable."""
        leaves = self.treedef.flatten_up_to(tree)
        return self._concatenate([leaves[index] for index in self._packed_indices]), self._rest_of(leaves)

    def unpack(self, packed: Packed) -> Any:
        """(buffers, rest) -> tree, traceable."""
        return self._tree(self._split(packed[0]), packed[1])

    def packed(self, tree: Any) -> Packed:
        """`pack` of a tree of arrays, outside jit: the buffers are built on their devices, the other leaves are
        passed through (the same arrays)."""
        leaves = self.treedef.flatten_up_to(tree)
        packed_leaves = [leaves[index] for index in self._packed_indices]
        return (self._jit_concatenate(packed_leaves) if packed_leaves else ()), self._rest_of(leaves)

    def unpacked(self, packed: Packed) -> Any:
        """`unpack` outside jit: new arrays for the packed leaves, the others passed through (the same arrays)."""
        buffers, rest = packed
        return self._tree(self._jit_split(buffers) if buffers else (), rest)

    @functools.cached_property
    def _packed_indices(self) -> tuple[int, ...]:
        return tuple(index for members in self.groups for index, _ in members)

    @functools.cached_property
    def _jit_concatenate(self):
        return jax.jit(self._concatenate, out_shardings=self.shardings[0])

    @functools.cached_property
    def _jit_split(self):
        replicated = tuple(sharding for sharding, members in zip(self.shardings[0], self.groups) for _ in members)
        return jax.jit(self._split, out_shardings=replicated)

    def _rest_of(self, leaves: list[Any]) -> tuple[Any, ...]:
        return tuple(leaves[index] for index in self.rest)

    def _tree(self, packed_leaves, rest) -> Any:
        leaves: list[Any] = [None] * self.treedef.num_leaves
        for index, leaf in zip(self._packed_indices, packed_leaves, strict=True):
            leaves[index] = leaf
        for index, leaf in zip(self.rest, rest, strict=True):
            leaves[index] = leaf
        return self.treedef.unflatten(leaves)

    def _concatenate(self, packed_leaves) -> tuple[jax.Array, ...]:
        """Packed leaves (in `_packed_indices` order) -> one buffer per group; a leaf whose shape or dtype is not
        the packing's (which would silently promote its whole buffer) is an error."""
        leaves = iter(packed_leaves)
        buffers = []
        for dtype, members in zip(self.dtypes, self.groups, strict=True):
            parts = []
            for index, shape in members:
                leaf = next(leaves)
                if tuple(leaf.shape) != shape or leaf.dtype != dtype:
                    raise ValueError(f"leaf {index} to pack is {leaf.dtype}{list(leaf.shape)}: expected "
                                     f"{dtype}{list(shape)}, as in the abstract tree the packing was made for")
                parts.append(jnp.ravel(leaf))
            buffers.append(jnp.concatenate(parts))
        return tuple(buffers)

    def _split(self, buffers) -> tuple[jax.Array, ...]:
        """One buffer per group -> the packed leaves, in `_packed_indices` order."""
        leaves = []
        for buffer, members in zip(buffers, self.groups, strict=True):
            offset = 0
            for _, shape in members:
                size = math.prod(shape)
                leaves.append(jax.lax.slice_in_dim(buffer, offset, offset + size).reshape(shape))
                offset += size
        return tuple(leaves)
