"""Tests for jaxcsp.io against ASE and pymatgen (independent readers/writers)."""

from __future__ import annotations

import pathlib

import ase.db
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifParser
from strategies import atoms_objects

import jaxcsp as jc
from jaxcsp import io

DATA = pathlib.Path(jc.__file__).parent / "data" / "structures"


def _assert_same_atoms(a: Atoms, b: Atoms, atol=1e-10):
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(a.cell.array, b.cell.array, atol=atol)
    np.testing.assert_allclose(a.positions, b.positions, atol=atol)
    assert all(b.pbc)


# ---------------------------------------------------------------------- in-memory round trips


@settings(max_examples=250)
@given(atoms_objects())
def test_ase_round_trip_exact(atoms):
    c = io.from_ase(atoms)
    assert c.frac.dtype == np.float64
    (back,) = io.to_ase(c)
    _assert_same_atoms(atoms, back, atol=1e-10)
    # and Crystals -> ASE -> Crystals
    again = io.from_ase(back)
    np.testing.assert_allclose(again.frac, c.frac, atol=1e-12)
    np.testing.assert_array_equal(again.lattice, c.lattice)


@settings(max_examples=250)
@given(atoms_objects())
def test_pymatgen_round_trip_exact(atoms):
    c = io.from_ase(atoms)
    (s,) = io.to_pymatgen(c)
    # pymatgen's own Cartesian coordinates agree with ASE's
    np.testing.assert_allclose(s.cart_coords, atoms.positions, atol=1e-10)
    np.testing.assert_allclose(s.lattice.matrix, atoms.cell.array, atol=1e-12)
    assert [site.specie.Z for site in s] == atoms.numbers.tolist()
    back = io.from_pymatgen(s)
    np.testing.assert_allclose(back.frac, c.frac, atol=1e-12)
    np.testing.assert_array_equal(back.lattice, c.lattice)
    np.testing.assert_array_equal(back.species, c.species)


@settings(max_examples=20)
@given(st.lists(atoms_objects(max_atoms=6), min_size=2, max_size=6))
def test_batches_of_mixed_sizes(images):
    c = io.from_ase(images)
    assert c.batch_size == len(images)
    assert c.max_atoms == max(len(a) for a in images)
    np.testing.assert_array_equal(c.num_atoms, [len(a) for a in images])
    for a, b in zip(images, io.to_ase(c), strict=True):
        _assert_same_atoms(a, b)
    for a, s in zip(images, io.to_pymatgen(c), strict=True):
        np.testing.assert_allclose(s.cart_coords, a.positions, atol=1e-10)


def test_max_atoms_and_dtype():
    c = io.from_ase([bulk("Si"), bulk("Cu")], max_atoms=5, dtype=np.float32)
    assert c.max_atoms == 5 and c.frac.dtype == np.float32
    with pytest.raises(jc.InvalidStructureError, match="exceed max_atoms=1"):
        io.from_ase([bulk("Cu"), bulk("Si")], max_atoms=1)


@pytest.mark.filterwarnings("ignore:Issues encountered while parsing CIF")
def test_from_pymatgen_matches_pymatgen_cif_reader():
    """Our reader (through ASE) and pymatgen's CIF parser agree on every shipped structure."""
    matcher = StructureMatcher(ltol=1e-4, stol=1e-4, angle_tol=1e-3, primitive_cell=False)
    for path in sorted(DATA.glob("*.cif")):
        ours = io.to_pymatgen(io.read(path))[0]
        ref = CifParser(str(path)).parse_structures(primitive=False)[0]
        assert len(ours) == len(ref), path.name
        assert matcher.fit(ours, ref), path.name


# ---------------------------------------------------------------------- files


def _sample():
    return io.from_ase(
        [
            bulk("Si", "diamond", a=5.43).repeat((1, 1, 2)),
            bulk("NaCl", "rocksalt", a=5.64),
            Atoms(
                "CO2",
                scaled_positions=[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [-0.2, 1.3, 0.7]],
                cell=[[4, 0, 0], [1.5, 5, 0], [0.7, -0.9, 6]],
                pbc=True,
            ),
        ]
    )


def test_extxyz_round_trip_many_structures(tmp_path):
    c = _sample()
    io.write(tmp_path / "x.extxyz", c)
    back = io.read(tmp_path / "x.extxyz")
    np.testing.assert_array_equal(back.species, c.species)
    np.testing.assert_allclose(back.lattice, c.lattice, atol=1e-12)
    np.testing.assert_allclose(back.positions, c.positions, atol=1e-8)  # %16.8f in ASE


def test_cif_round_trip_many_structures(tmp_path):
    c = _sample()
    io.write(tmp_path / "x.cif", c)
    back = io.read(tmp_path / "x.cif")
    assert back.batch_size == 3
    np.testing.assert_array_equal(back.species, c.species)
    # CIF keeps cell parameters (orientation is standardised): compare metric tensors
    g = lambda L: np.einsum("bij,bkj->bik", L, L)  # noqa: E731
    np.testing.assert_allclose(g(np.asarray(back.lattice)), g(np.asarray(c.lattice)), atol=1e-10)
    np.testing.assert_allclose(np.asarray(back.frac) % 1.0, np.asarray(c.frac) % 1.0, atol=1e-10)


def test_poscar_round_trip_and_single_structure_rule(tmp_path):
    c = _sample()
    one = jc.compact(c.take(np.array([2])))
    io.write(tmp_path / "POSCAR", one, format="vasp")
    back = io.read(tmp_path / "POSCAR", format="vasp")
    np.testing.assert_allclose(back.lattice, one.lattice, atol=1e-12)
    np.testing.assert_allclose(back.positions, one.positions, atol=1e-10)
    with pytest.raises(jc.StructureFileError, match="one structure per file but the batch has 3"):
        io.write(tmp_path / "POSCAR2", c, format="vasp")


def test_db_round_trip_bit_exact_with_metadata(tmp_path):
    c = _sample()
    db = tmp_path / "c.db"
    ids = io.write_db(
        db,
        c,
        key_value_pairs={"spg": np.array([227, 225, 1]), "loss": [0.5, 0.25, 1.0], "tag": "demo"},
        data=[{"spectrum": np.arange(3.0)}, {}, {}],
    )
    assert ids == [1, 2, 3]
    back, rows = io.read_db(db, with_data=True)
    np.testing.assert_array_equal(back.lattice, c.lattice)
    np.testing.assert_array_equal(back.positions, c.positions)
    assert [r["spg"] for r in rows] == [227, 225, 1]
    assert rows[0]["tag"] == "demo" and rows[1]["loss"] == 0.25
    np.testing.assert_array_equal(rows[0]["data"]["spectrum"], np.arange(3.0))
    # selection through ASE's query language, and ASE sees the same rows
    sel, meta = io.read_db(db, "loss<0.6")
    assert [m["id"] for m in meta] == [1, 2] and sel.batch_size == 2
    with ase.db.connect(db) as con:
        assert con.count() == 3 and con.get(id=2).spg == 225
    # appending keeps earlier rows
    io.write_db(db, c.take(np.array([0])), key_value_pairs=[{"spg": 1}])
    assert io.read_db(db)[0].batch_size == 4


def test_db_bad_metadata(tmp_path):
    c = _sample()
    with pytest.raises(jc.InvalidStructureError, match="2 key_value_pairs rows for 3 structures"):
        io.write_db(tmp_path / "a.db", c, key_value_pairs=[{}, {}])
    with pytest.raises(jc.InvalidStructureError, match="structure 1, field 'key_value_pairs'"):
        io.write_db(tmp_path / "a.db", c, key_value_pairs=[{}, {"x": [1, 2]}, {}])
    with pytest.raises(jc.StructureFileError, match="no rows match"):
        io.write_db(tmp_path / "b.db", c)
        io.read_db(tmp_path / "b.db", "id>10")


# ---------------------------------------------------------------------- bad input


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(jc.StructureFileError, match=r"missing\.cif: no such file"):
        io.read(tmp_path / "missing.cif")
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a oops\nloop_\n_atom_site_label\n")
    with pytest.raises(jc.StructureFileError, match=r"bad\.cif: file holds no structures"):
        io.read(bad)
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("two\nnot an xyz file\n")
    with pytest.raises(jc.StructureFileError, match=r"garbage\.extxyz: could not parse"):
        io.read(garbage)
    nan = tmp_path / "nan.extxyz"
    nan.write_text(
        '1\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"\nSi nan 0 0\n'
    )
    with pytest.raises(jc.InvalidStructureError, match=r"nan\.extxyz, structure 0, field 'frac'"):
        io.read(nan)


def test_connect_db_rejects_unusable_paths_before_creating_anything(tmp_path):
    c = io.from_ase(bulk("Si", "diamond", a=5.43))
    missing = tmp_path / "nonexistent" / "dir" / "out.db"
    with pytest.raises(jc.StructureFileError, match=r"out\.db: directory .*dir does not exist"):
        io.connect_db(missing)
    with pytest.raises(jc.StructureFileError, match=r"out\.db: directory .* does not exist"):
        io.write_db(missing, c)
    assert not (tmp_path / "nonexistent").exists()
    with pytest.raises(jc.StructureFileError, match="is a directory") as e:
        io.connect_db(tmp_path)
    assert e.value.path == str(tmp_path) and "\n" not in str(e.value)
    with pytest.raises(jc.StructureFileError, match="is a directory"):
        io.read_db(tmp_path)
    with pytest.raises(jc.StructureFileError, match="cannot open as a database"):
        io.connect_db(tmp_path / "out")  # ASE takes the type from the extension
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    with pytest.raises(jc.StructureFileError, match=r"notes\.db: exists and is not an SQLite"):
        io.write_db(text, c)
    assert text.read_text() == "not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
    io.connect_db(tmp_path / "fresh.db")  # a new file in a writable directory is fine


def test_from_ase_rejects_non_periodic_and_dummy_atoms():
    mol = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[5, 5, 5], pbc=[True, True, False])
    with pytest.raises(jc.InvalidStructureError, match="structure 1, field 'pbc'"):
        io.from_ase([bulk("Si"), mol])
    dummy = Atoms("X", cell=[3, 3, 3], pbc=True)
    with pytest.raises(jc.InvalidStructureError, match="field 'species': dummy atom"):
        io.from_ase(dummy)
    flat = Atoms("Si", cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True)
    with pytest.raises(
        jc.InvalidStructureError, match="structure 0, field 'lattice': cell is singular"
    ):
        io.from_ase(flat)
    left = Atoms("Si", cell=[[3, 0, 0], [0, -3, 0], [0, 0, 3]], pbc=True)
    with pytest.raises(jc.InvalidStructureError, match="left-handed"):
        io.from_ase(left)
    with pytest.raises(jc.InvalidStructureError, match=r"expected ase\.Atoms"):
        io.from_ase([bulk("Si"), "Si"])


def test_from_pymatgen_rejects_disorder():
    s = Structure(Lattice.cubic(3), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(jc.InvalidStructureError, match="field 'species': disordered"):
        io.from_pymatgen([Structure(Lattice.cubic(3), ["Fe"], [[0, 0, 0]]), s])
