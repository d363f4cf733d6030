"""Figures (matplotlib). One private module per feature; public functions re-exported here."""

from ._fit import (
    plot_fit as plot_fit,
    plot_obs_vs_pred as plot_obs_vs_pred,
    plot_profiles as plot_profiles,
    plot_residuals as plot_residuals,
)
from ._gsa import (
    plot_morris as plot_morris,
    plot_sobol as plot_sobol,
    plot_sobol_timecourse as plot_sobol_timecourse,
)
from ._popfit import (
    plot_gof as plot_gof,
    plot_individual_fits as plot_individual_fits,
    plot_parameter_covariates as plot_parameter_covariates,
    plot_population_vpc as plot_population_vpc,
    population_vpc as population_vpc,
)
from ._timecourse import (
    plot_timecourse as plot_timecourse,
    plot_vpc as plot_vpc,
    save_figure as save_figure,
)
from ._translation import (
    attribution_waterfall as attribution_waterfall,
    attribution_waterfalls as attribution_waterfalls,
    translation_heatmap as translation_heatmap,
)
from ._vpc import (
    VPCStatistics as VPCStatistics,
    plot_vpc_percentiles as plot_vpc_percentiles,
    vpc_statistics as vpc_statistics,
)
