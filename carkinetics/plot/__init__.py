"""Figures (matplotlib). One private module per feature; public functions re-exported here."""

from ._timecourse import (
    plot_timecourse as plot_timecourse,
    plot_vpc as plot_vpc,
    save_figure as save_figure,
    vpc_bands as vpc_bands,
)

from ._translation import (
    attribution_waterfall as attribution_waterfall,
    attribution_waterfalls as attribution_waterfalls,
    translation_heatmap as translation_heatmap,
)
