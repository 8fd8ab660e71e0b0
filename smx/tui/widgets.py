"""Widgets shared by the screens: a DataTable that refreshes in place, and terminal charts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.cells import cell_len
from textual import events
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey
from textual_plotext import PlotextPlot

from smx.tui.cells import Cell, short_config_names
from smx.tui.model import CurveSet, EpochMetric

# DataTable.remove_row costs time linear in the table's size, so removing many rows one by one is quadratic:
# past this many, the table is rebuilt instead.
REBUILD_AFTER_REMOVALS = 50


class LiveTable(DataTable[Cell]):
    """A table that a refresh updates in place.

    Only cells that changed are updated, the cursor stays on the row it was on (rows are identified by key, not
    position), and rows stay sorted by the chosen column. `s` picks the next column to sort by, `S` reverses the
    order, and clicking a column's header sorts by it.
    """

    BINDINGS = [
        Binding("s", "next_sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse", show=False),
    ]
    DEFAULT_CSS = """
    LiveTable {
        height: 1fr;
    }
    """

    class SortChanged(Message):
        """The column or direction the table is sorted by changed."""

    def __init__(self, columns: Sequence[tuple[str, str]] = (), *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row")
        self.column_spec: list[tuple[str, str]] = []  # (key, title) of each column
        self.sort_column: str | None = None  # None: the order the rows were given in
        self.sort_reverse = False
        self._shown: dict[str, tuple[Cell, ...]] = {}
        self._initial_columns = list(columns)

    def on_mount(self) -> None:
        self.set_columns(self._initial_columns)

    async def _on_idle(self, event: events.Idle) -> None:
        # DataTable measures new and updated cells when idle, and keeps what it painted before that (its caches are
        # keyed by its update count, not by column widths): a row painted in between stayed cut to its columns' old
        # widths, "mnist…  1.…", until it next changed. Painting them again after measuring avoids that.
        measuring = self._require_update_dimensions or bool(self._updated_cells)
        await super()._on_idle(event)
        if measuring:
            self._update_count += 1
            self.refresh()

    def set_columns(self, columns: Sequence[tuple[str, str]]) -> None:
        """Show these columns, emptying the table if they are not the ones shown."""
        if list(columns) == self.column_spec:
            return
        self.column_spec = list(columns)
        self.clear(columns=True)
        self._shown = {}
        for key, title in self.column_spec:
            self.add_column(title, key=key)
        if self.sort_column is not None and self.sort_column not in dict(self.column_spec):
            self.sort_column, self.sort_reverse = None, False
            self.post_message(self.SortChanged())

    @property
    def selected_key(self) -> str | None:
        """Key of the row under the cursor."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key.value

    @property
    def sort_title(self) -> str | None:
        """The sort column's title with an arrow for the direction, or None when unsorted."""
        if self.sort_column is None:
            return None
        return f"{dict(self.column_spec)[self.sort_column]} {'▼' if self.sort_reverse else '▲'}"

    def show_rows(self, rows: Mapping[str, tuple[Cell, ...]]) -> None:
        """Make the table show these rows (row key -> cells, in their default order), changing only what differs."""
        selected = self.selected_key
        stale = self._shown.keys() - rows.keys()
        # Updated in place, unsorted rows keep their places and new ones go to the bottom. Where the default order
        # says otherwise (an experiment updated moves up, a row added among others), they are shown anew in it.
        in_place_order = [key for key in self._shown if key in rows] + [key for key in rows if key not in self._shown]
        if len(stale) > REBUILD_AFTER_REMOVALS or (self.sort_column is None and in_place_order != list(rows)):
            self._empty()
        else:
            for key in stale:
                self.remove_row(key)
        changed = bool(stale)
        column_keys = [key for key, _ in self.column_spec]
        updates: dict[str, list[tuple[str, Cell, Cell]]] = {}  # column -> (row key, old cell, new cell)
        for key, cells in rows.items():
            shown = self._shown.get(key)
            if shown is None:
                self.add_row(*cells, key=key)
            elif shown != cells:
                for column, old, new in zip(column_keys, shown, cells):
                    if old != new:
                        self.update_cell(key, column, new)
                        updates.setdefault(column, []).append((key, old, new))
            else:
                continue
            changed = True
        for column, updated in updates.items():
            self._fit_column(column, updated)
        self._shown = dict(rows)
        if self.sort_column is not None and changed:
            self._sort()
        self._keep_cursor_on(selected)

    def _fit_column(self, column: str, updated: list[tuple[str, Cell, Cell]]) -> None:
        """Fit the column's width to these updated cells. DataTable measures the whole column again for each cell
        updated narrower than its column: for 300 of 10,000 rows, 24 s of a frozen screen. This asks for that at most
        once, and only when the column's widest cell may have narrowed."""
        width = self.columns[ColumnKey(column)].content_width
        key, _, widest = max(updated, key=lambda update: cell_len(update[2].shown))
        if cell_len(widest.shown) > width or any(cell_len(old.shown) >= width for _, old, _ in updated):
            self.update_cell(key, column, widest, update_width=True)

    def _empty(self) -> None:
        self.clear()
        self._shown = {}

    def _sort(self) -> None:
        self.sort(self.sort_column, key=lambda cell: cell.sort_value, reverse=self.sort_reverse)

    def _keep_cursor_on(self, key: str | None) -> None:
        if key in self._shown and self.get_row_index(key) != self.cursor_row:
            self.move_cursor(row=self.get_row_index(key))

    def sort_by(self, column: str | None, reverse: bool = False) -> None:
        selected = self.selected_key
        self.sort_column, self.sort_reverse = column, reverse
        if column is None:
            rows = self._shown  # in the default order, the order they were given in
            self._empty()
            self.show_rows(rows)
        else:
            self._sort()
        self._keep_cursor_on(selected)
        self.post_message(self.SortChanged())

    def action_next_sort(self) -> None:
        """Sort by the next column, and after the last one, in the default order again."""
        keys = [None, *(key for key, _ in self.column_spec)]
        self.sort_by(keys[(keys.index(self.sort_column) + 1) % len(keys)])

    def action_reverse_sort(self) -> None:
        if self.sort_column is not None:
            self.sort_by(self.sort_column, not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        column = event.column_key.value
        self.sort_by(column, reverse=column == self.sort_column and not self.sort_reverse)


class CurvesPlot(PlotextPlot):
    """Certified accuracy against radius, one line per selected config."""

    # More lines than this are unreadable in a terminal, and slow to draw.
    MAX_CURVES = 20
    # plotext leaves out the whole legend when its longest label is wider than the plot less this.
    LEGEND_MARGIN = 12

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: tuple[CurveSet | None, set[str]] = (None, set())

    def show_curves(self, curves: CurveSet | None, selected: set[str]) -> int:
        """Draw the selected curves that have samples; returns how many were drawn."""
        self._shown = (curves, set(selected))
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("radius (L2)")
        plt.ylim(0, 1)
        drawn = [curve for curve in (curves.curves if curves else []) if curve.job_key in selected and curve.samples]
        # Names shortened to the plot's width keep the legend, and with it which line is which.
        room = self.size.width - self.LEGEND_MARGIN - len(" ACR 0.000") if self.size.width else 10**6
        labels = short_config_names([curve.config for curve in drawn], max(room, 4))
        for curve in drawn[:self.MAX_CURVES]:
            plt.plot(curves.radii, curve.accuracy, label=f"{labels[curve.config]} ACR {curve.acr:.3f}",
                     marker="braille")
        self.refresh()
        return min(len(drawn), self.MAX_CURVES)

    def on_resize(self) -> None:
        self.show_curves(*self._shown)


class MetricsPlot(PlotextPlot):
    """A training run's loss and accuracy under noise, per epoch."""

    def show_metrics(self, metrics: list[EpochMetric]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("epoch")
        if metrics:
            epochs = [metric.epoch for metric in metrics]
            plt.plot(epochs, [metric.loss for metric in metrics], label="loss", marker="braille")
            plt.plot(epochs, [metric.noisy_accuracy for metric in metrics], label="noisy acc", marker="braille",
                     yside="right")
        self.refresh()
