"""The posterior mean's data fit is computed once per reconstruction and passed on."""

from __future__ import annotations

from dwgf_sci.operators import resolve_spec
from dwgf_sci.pipelines.reconstruct import reconstruct_file
from dwgf_sci.pipelines.simulate import simulate
from dwgf_sci.solvers import DWGF
from dwgf_sci.solvers.likelihood import DataTerm


def test_reconstruction_computes_the_mean_s_chi2_once(tmp_path, prior_dir, monkeypatch) -> None:
    from dwgf_sci.priors import load_prior

    (path,) = simulate("galaxies", resolve_spec("psf", ["fwhm=3"]), tmp_path / "obs", size=32)
    # the default preset on this prior: no retry, so only the mean's fit needs a chi-square
    solver = DWGF(load_prior(prior_dir), "default", steps=2, particles=2, seed=0)
    calls = []
    real = DataTerm.reduced_chi2

    def counted(self, ax, y):
        calls.append(tuple(ax.shape))
        return real(self, ax, y)

    monkeypatch.setattr(DataTerm, "reduced_chi2", counted)
    result = reconstruct_file(path, solver, tmp_path / "out")
    assert len(calls) == 1, calls
    assert result.metrics["reduced_chi2_mean"] > 0 and result.metrics["reduced_chi2_limit"] > 1
