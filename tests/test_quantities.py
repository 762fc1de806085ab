"""Kubernetes resource quantities as Docker needs them: memory in bytes, cpu in cores (pure)."""

from __future__ import annotations

import pytest

from localml_tasks.quantities import cpu_cores, describe_bytes, memory_bytes, quantity


@pytest.mark.parametrize(("written", "size"), [
    ("512Mi", 512 * 1024**2),
    ("1Gi", 1024**3),
    ("1.5Gi", 1536 * 1024**2),
    ("200Mi", 200 * 1024**2),
    ("64Ki", 64 * 1024),
    ("1Ti", 1024**4),
    ("1G", 1_000_000_000),
    ("500M", 500_000_000),
    ("128k", 128_000),
    ("129e6", 129_000_000),
    ("1E3", 1000),  # an exponent, not exa
    ("1E", 10**18),  # exa
    ("134217728", 134_217_728),  # plain bytes
    (134217728, 134_217_728),
    ("0.1Gi", 107_374_183),  # 107374182.4 bytes: rounded up, as Kubernetes does
    ("1500m", 2),  # 1.5 bytes (a millibyte suffix is legal): up to 2
    (" 2Gi ", 2 * 1024**3),
])
def test_memory_quantities_become_bytes(written, size):
    assert memory_bytes(written) == size


@pytest.mark.parametrize(("written", "cores"), [
    ("500m", 0.5),
    ("250m", 0.25),
    ("1500m", 1.5),
    ("2", 2.0),
    ("0.5", 0.5),
    ("0.1", 0.1),
    (0.5, 0.5),
    (2, 2.0),
    ("1e-1", 0.1),
    ("100m", 0.1),
    ("0.0005", 0.001),  # below a millicore: Kubernetes rounds up to 1m
])
def test_cpu_quantities_become_cores(written, cores):
    assert cpu_cores(written) == pytest.approx(cores)
    assert isinstance(cpu_cores(written), float)


@pytest.mark.parametrize("written", ["1 GB", "1GB", "1gi", "Gi", "", "abc", "1.2.3", "0x10", "5mi", "1Gi2",
                                     "500 m", None, True, [1], float("nan")])
def test_what_is_not_a_quantity_is_a_value_error(written):
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity(written)


@pytest.mark.parametrize("function", [memory_bytes, cpu_cores])
def test_negative_amounts_are_refused(function):
    with pytest.raises(ValueError, match="negative"):
        function("-1")


def test_exact_values_keep_their_precision():
    assert quantity("0.1") * 10 == 1  # Decimal, not a float
    assert quantity("1Ki") == 1024 and quantity("1k") == 1000


@pytest.mark.parametrize(("size", "text"), [(6 * 1024**2, "6 MiB"), (1536 * 1024**2, "1.5 GiB"), (512, "512 bytes"),
                                            (2048, "2 KiB")])
def test_sizes_read_well_in_messages(size, text):
    assert describe_bytes(size) == text
