"""The dock widget: connect, open a case, mark its extent, draw, send, follow the
proposals, commit.

Every engine call runs in a napari worker thread (:func:`napari.qt.threading.create_worker`
over the generators of :mod:`._rounds`); the Qt thread only snapshots the drawing,
shows progress and puts results into layers. One call runs at a time; the buttons
that would start another are disabled meanwhile.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _rounds, _views
from ._slices import SliceBook

__all__ = ["DilsegWidget"]

log = logging.getLogger("napari_dilseg")


def _real(obj: Any) -> Any:
    """The object behind napari's PublicOnlyProxy (plugin widgets get a proxied viewer)."""
    return getattr(obj, "__wrapped__", obj)


def _closed(session: Any) -> bool:
    """Whether a session (in-process ``closed``, remote ``_closed``) is committed or closed."""
    return bool(getattr(session, "closed", getattr(session, "_closed", False)))


class DilsegWidget(QWidget):
    """dilseg inside napari: the person draws slices, the engine learns and proposes.

    Attributes a script (or a test) may use: ``engine_config`` (the ``engine.Config``
    of an in-process engine, None: the default), ``engine``, ``session``, ``book``
    (:class:`~napari_dilseg._slices.SliceBook`), ``image_layer``, ``drawing_layer``,
    ``result_layer``, ``axis``, ``extent``, ``proposals``, ``status``
    (:class:`~napari_dilseg._rounds.EngineStatus`), ``last_round``
    (:class:`~napari_dilseg._rounds.RoundOutcome`), ``worker`` (the running call),
    ``stages`` (the progress it reported) and ``busy``.
    """

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.engine_config: Any = None
        self.engine: Any = None
        self.session: Any = None
        self.book: Optional[SliceBook] = None
        self.image_layer: Any = None
        self.drawing_layer: Any = None
        self.result_layer: Any = None
        self.axis: Optional[int] = None
        self.first: Optional[int] = None
        self.last: Optional[int] = None
        self.proposals: list[int] = []
        self.status: Optional[_rounds.EngineStatus] = None
        self.last_round: Optional[_rounds.RoundOutcome] = None
        self.last_error: Optional[BaseException] = None
        self.worker: Any = None
        self.stages: list[str] = []  # the progress stages the running (or last) call reported
        self._owns_engine = False  # engines the widget started are closed with it
        self._sent_extent: Optional[tuple[int, int]] = None
        self._build_ui()
        self._refresh_images()
        layers = napari_viewer.layers.events
        for ev in (layers.inserted, layers.removed, layers.moved):
            ev.connect(self._refresh_images)
        app = QApplication.instance()
        if app is not None:  # leaving napari closes an open session (no commit) and the engine
            app.aboutToQuit.connect(self.shutdown)
        self._update_buttons()

    # --- UI ---------------------------------------------------------------------------
    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()  # a short dock scrolls instead of squeezing the rows
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        outer.addWidget(scroll)
        inner = QWidget()
        scroll.setWidget(inner)
        root = QVBoxLayout(inner)

        def group(title: str) -> tuple[QVBoxLayout, QFormLayout]:
            box = QGroupBox(title)
            col = QVBoxLayout(box)
            form = QFormLayout()
            col.addLayout(form)
            root.addWidget(box)
            return col, form

        def note() -> QLabel:  # a wrapped line of state, full width (not in a form row: it would clip)
            label = QLabel("")
            label.setWordWrap(True)
            return label

        col, form = group("Engine")
        self.local_radio = QRadioButton("in process")
        self.remote_radio = QRadioButton("server")
        self.local_radio.setChecked(True)
        radios = QButtonGroup(self)
        radios.addButton(self.local_radio)
        radios.addButton(self.remote_radio)
        row = QHBoxLayout()
        row.addWidget(self.local_radio)
        row.addWidget(self.remote_radio)
        form.addRow("engine", row)
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("http://127.0.0.1:8000")
        self.key_edit = QLineEdit()
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("from `dilseg keys add`")
        form.addRow("server URL", self.url_edit)
        form.addRow("key", self.key_edit)
        self.connect_btn = QPushButton("Connect")
        self.connect_btn.clicked.connect(self._on_connect)
        col.addWidget(self.connect_btn)
        self.engine_label = note()
        self.engine_label.setText("not connected")
        col.addWidget(self.engine_label)

        col, form = group("Case")
        self.image_combo = QComboBox()
        form.addRow("image", self.image_combo)
        self.open_btn = QPushButton("Open case")
        self.open_btn.setToolTip(
            "Open the selected Image layer; the annotation axis is the one the view slices now, "
            "the spacing is the layer's scale"
        )
        self.open_btn.clicked.connect(self.open_case)
        col.addWidget(self.open_btn)
        self.case_label = note()
        self.case_label.setText("no case open")
        col.addWidget(self.case_label)
        row = QHBoxLayout()
        self.first_btn = QPushButton("First slice here")
        self.last_btn = QPushButton("Last slice here")
        self.first_btn.setToolTip("The slice the view shows is the object's first one on the annotation axis")
        self.last_btn.setToolTip("The slice the view shows is the object's last one on the annotation axis")
        self.first_btn.clicked.connect(self.mark_first)
        self.last_btn.clicked.connect(self.mark_last)
        row.addWidget(self.first_btn)
        row.addWidget(self.last_btn)
        col.addLayout(row)
        self.extent_label = note()
        self.extent_label.setText("extent: mark the object's first and last slice")
        col.addWidget(self.extent_label)

        col, form = group("Draw and send")
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 64)
        self.k_spin.setValue(3)
        form.addRow("slices per round", self.k_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 500)
        self.steps_spin.setValue(20)
        form.addRow("learning steps", self.steps_spin)
        self.empty_btn = QPushButton("Mark slice empty")
        self.empty_btn.setToolTip("This slice holds no object: it is sent as an all-zero mask")
        self.empty_btn.clicked.connect(self.mark_empty)
        col.addWidget(self.empty_btn)
        self.send_btn = QPushButton("Send slices")
        self.send_btn.setToolTip(
            "Send the slices drawn or changed since the last send; propagate, learn, show the result"
        )
        self.send_btn.clicked.connect(self.send_slices)
        col.addWidget(self.send_btn)
        self.drawn_label = note()
        col.addWidget(self.drawn_label)

        col, _ = group("Proposals")
        self.proposal_list = QListWidget()
        self.proposal_list.setMaximumHeight(80)
        self.proposal_list.itemClicked.connect(self._on_proposal_clicked)
        col.addWidget(self.proposal_list)
        self.next_btn = QPushButton("Next slice")
        self.next_btn.setToolTip("Jump the view to the next proposed slice not drawn yet")
        self.next_btn.clicked.connect(self.next_slice)
        col.addWidget(self.next_btn)

        col, _ = group("Learning")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        col.addWidget(self.progress)
        self.stage_label = note()
        col.addWidget(self.stage_label)
        self.counters_label = note()
        col.addWidget(self.counters_label)

        self.final_check = QCheckBox("commit the result layer as final")
        self.final_check.setToolTip("Correct the result layer first; it becomes the case's training target")
        root.addWidget(self.final_check)
        self.commit_btn = QPushButton("Commit")
        self.commit_btn.setToolTip("Store the case in the engine's replay buffer and close it")
        self.commit_btn.clicked.connect(self.commit_case)
        root.addWidget(self.commit_btn)
        root.addStretch(1)

    def _refresh_images(self, *_: Any) -> None:
        from napari.layers import Image

        try:
            current = self.image_combo.currentText()
            names = [ly.name for ly in self.viewer.layers if isinstance(ly, Image) and ly.ndim == 3]
            self.image_combo.clear()
            self.image_combo.addItems(names)
            if current in names:
                self.image_combo.setCurrentText(current)
        except RuntimeError:  # the widget is gone while the viewer still emits
            pass

    @property
    def busy(self) -> bool:
        """Whether an engine call is running."""
        return self.worker is not None

    def _update_buttons(self) -> None:
        idle, connected, open_ = not self.busy, self.engine is not None, self.session is not None
        self.connect_btn.setEnabled(idle)
        self.open_btn.setEnabled(idle and connected)
        for b in (self.first_btn, self.last_btn, self.empty_btn, self.next_btn):
            b.setEnabled(open_)
        for b in (self.send_btn, self.commit_btn):
            b.setEnabled(idle and open_)

    def _say(self, text: str, error: bool = False) -> None:
        self.stage_label.setText(text)
        self.stage_label.setStyleSheet("color: #e05050;" if error else "")
        (log.warning if error else log.info)("%s", text)

    # --- running engine calls ---------------------------------------------------------------
    def _run(self, gen_func: Callable, *args: Any, on_done: Callable[[Any], None]) -> Any:
        """Run ``gen_func(*args)`` (a generator of :class:`~._rounds.Progress`) in a
        worker thread; ``on_done(value)`` on the Qt thread when it returns."""
        from napari.qt.threading import create_worker

        if self.busy:
            self._say("busy: wait for the running call", error=True)
            return None
        self.last_error = None

        def returned(value: Any) -> None:
            try:
                on_done(value)
            except Exception as exc:  # noqa: BLE001 - shown to the person
                errored(exc)

        def errored(exc: BaseException) -> None:
            self.last_error = exc
            self.progress.setFormat("failed")
            self._say(f"{type(exc).__name__}: {exc}", error=True)

        def finished() -> None:
            self.worker = None
            if self.last_error is None:
                self.progress.setValue(100)
                self.progress.setFormat("done")
            self._update_buttons()

        worker = create_worker(
            gen_func,
            *args,
            _start_thread=False,
            _connect={"yielded": self._on_progress, "returned": returned, "errored": errored, "finished": finished},
        )
        self.worker = worker
        self.stages = []
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self._update_buttons()
        worker.start()
        return worker

    def _on_progress(self, p: _rounds.Progress) -> None:
        self.stages.append(p.stage)
        self.progress.setValue(int(round(100 * p.fraction)))
        self.progress.setFormat(f"{p.stage} %p%")
        self._say(p.text)

    def _show_status(self, status: Optional[_rounds.EngineStatus]) -> None:
        if status is None:
            return
        self.status = status
        self.counters_label.setText(status.describe())

    # --- engine ----------------------------------------------------------------------------------
    def _on_connect(self) -> None:
        if self.remote_radio.isChecked():
            self.connect_remote(self.url_edit.text().strip() or "http://127.0.0.1:8000", self.key_edit.text().strip())
        else:
            self.connect_local(self.engine_config)

    def _set_engine(self, eng: Any, where: str, owned: bool = True) -> None:
        self._drop_engine()
        self.engine, self._owns_engine = eng, owned
        self.engine_label.setText(where)
        self._show_status(_rounds.engine_status(eng) if not hasattr(eng, "info") else None)

    def connect_local(self, config: Any = None) -> Any:
        """Start an in-process ``engine.Engine(config)`` (in a worker: it imports torch)."""

        def done(eng: Any) -> None:
            self._set_engine(eng, f"in-process engine on {eng.device}")
            self._say("engine ready: open a case")

        return self._run(_rounds.local_engine, config, on_done=done)

    def connect_remote(self, url: str, api_key: Optional[str] = None) -> Any:
        """Connect to ``dilseg serve`` at ``url`` with ``api_key``."""

        def connect() -> Any:
            eng = yield from _rounds.remote_engine(url, api_key)
            return eng, _rounds.engine_status(eng)

        def done(value: Any) -> None:
            eng, status = value
            self._set_engine(eng, f"server {url} ({status.device})")
            self._show_status(status)
            self._say("connected: open a case")

        return self._run(connect, on_done=done)

    def use_engine(self, eng: Any, where: str = "engine given by the caller") -> None:
        """Use an engine built elsewhere (an ``engine.Engine`` or a ``RemoteEngine``)."""
        self._set_engine(eng, where, owned=False)
        self._update_buttons()

    # --- case --------------------------------------------------------------------------------------
    def _selected_image(self) -> Any:
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and active.ndim == 3:
            return active
        name = self.image_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        raise ValueError("select a 3D Image layer to open")

    def open_case(self) -> Any:
        """Open the selected Image layer as a case; the annotation axis is the one the
        view slices now, the spacing the layer's scale."""
        try:
            if self.engine is None:
                raise ValueError("connect an engine first")
            layer = self._selected_image()
            axis = _views.annotation_axis(self.viewer, layer)
            spacing = _views.spacing_of(layer)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return None
        old = self.session
        image = np.asarray(layer.data)

        def work() -> Any:
            session, status = yield from _rounds.open_case(self.engine, image, spacing, axis)
            if old is not None and not _closed(old):
                old.close()  # the case before, opened and not committed: closed without committing
            return session, status

        def done(value: Any) -> None:
            session, status = value
            self.session, self.image_layer, self.axis = session, layer, axis
            self.book = SliceBook(image.shape, axis)
            self.first = self.last = None
            self.proposals = []
            self.last_round = None
            self._show_proposals()
            self._make_drawing_layer(layer)
            self.result_layer = None
            self.case_label.setText(
                f"{layer.name}: {' × '.join(map(str, image.shape))}, drawn along axis {axis} "
                f"({image.shape[axis]} slices), spacing {' × '.join(f'{s:g}' for s in spacing)}"
            )
            self._show_extent()
            self._show_drawn()
            self._show_status(status)
            self._say("draw on the drawing layer; mark the object's first and last slice; then Send slices")

        return self._run(work, on_done=done)

    def _make_drawing_layer(self, image_layer: Any) -> None:
        name = f"{image_layer.name} drawing"
        shape = tuple(np.shape(image_layer.data))
        if name in self.viewer.layers and self.viewer.layers[name].data.shape == shape:
            layer = self.viewer.layers[name]  # the same image again: keep what was drawn
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            layer = self.viewer.add_labels(
                np.zeros(shape, dtype=np.uint8), name=name, scale=image_layer.scale, translate=image_layer.translate
            )
        layer.selected_label = 1
        layer.brush_size = max(3, min(shape) // 10)
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.drawing_layer = layer

    def _here(self) -> int:
        return _views.current_slice(self.viewer, self.image_layer, self.axis)

    def mark_first(self) -> None:
        """The slice the view shows is the object's first one."""
        if self.session is not None:
            self.first = self._here()
            self._extent_changed()

    def mark_last(self) -> None:
        """The slice the view shows is the object's last one."""
        if self.session is not None:
            self.last = self._here()
            self._extent_changed()

    @property
    def extent(self) -> Optional[tuple[int, int]]:
        """The marked extent ``(first, last)`` (ordered), or None until both are marked."""
        if self.first is None or self.last is None:
            return None
        return (min(self.first, self.last), max(self.first, self.last))

    def _show_extent(self) -> None:
        f = "–" if self.first is None else self.first
        la = "–" if self.last is None else self.last
        self.extent_label.setText(f"extent: first {f}, last {la}")

    def _extent_changed(self) -> None:
        self._show_extent()
        ext = self.extent
        if ext is None or self.busy:
            return
        session, k = self.session, self.k_spin.value()

        def done(proposals: list[int]) -> None:
            self.proposals = proposals
            self._show_proposals()
            self._say(f"extent {ext[0]}–{ext[1]} set; proposed slices {', '.join(map(str, proposals))}")

        self._run(_rounds.propose, session, k, ext, on_done=done)

    def mark_empty(self) -> None:
        """The slice the view shows holds no object: its paint is cleared and it is
        sent as an all-zero mask."""
        if self.session is None:
            return
        z = self._here()
        data = self.drawing_layer.data
        index = [slice(None)] * 3
        index[self.axis] = z
        if np.any(data[tuple(index)]):
            data[tuple(index)] = 0
            self.drawing_layer.refresh()
        self.book.mark_empty(z)
        self._show_drawn()
        self._say(f"slice {z} marked empty")

    def _show_drawn(self) -> None:
        if self.book is None or self.drawing_layer is None:
            self.drawn_label.setText("")
            return
        drawn = self.book.drawn(self.drawing_layer.data)
        sent = self.book.sent
        empty = sorted(self.book.empty)

        def show(zs: list[int]) -> str:
            return ", ".join(map(str, zs)) or "–"

        self.drawn_label.setText(f"drawn {show(drawn)} · empty {show(empty)} · sent {show(sent)}")

    # --- rounds ---------------------------------------------------------------------------------------
    def send_slices(self) -> Any:
        """Send the slices that changed since the last send (new, repainted, wiped, marked
        empty), then propagate, learn, and show the result and the next proposals."""
        if self.session is None:
            self._say("open a case first", error=True)
            return None
        view_axis = None
        try:
            view_axis = _views.annotation_axis(self.viewer, self.image_layer)
        except ValueError:
            pass
        if view_axis is not None and view_axis != self.axis:
            self._say(
                f"note: the view slices axis {view_axis}; this case is drawn along axis {self.axis} "
                "(only its slices are sent)"
            )
        labels = np.asarray(self.drawing_layer.data)
        changes = self.book.changes(labels)  # copies of the changed slices, taken on the Qt thread
        after = len(set(self.book.sent) - set(changes.erase) | set(changes.annotate))
        if not changes and not self.book.sent:
            self._say("draw the object on a slice (or mark one empty) first", error=True)
            return None
        if not changes and self.last_round is not None and self.extent == self._sent_extent:
            self._say("nothing changed since the last send")
            return None
        ext, steps, k = self.extent, self.steps_spin.value(), self.k_spin.value()

        def done(out: _rounds.RoundOutcome) -> None:
            self.book.mark_sent(out.sent)
            self._sent_extent = ext
            self.last_round = out
            if out.result is not None:
                self._show_result(out.result)
            self.proposals = out.proposals
            self._show_proposals()
            self._show_status(out.status)
            self._show_drawn()
            learn = out.timings.get("learn", {})
            extra = f", learning {learn.get('total', learn.get('learn', 0)) / 1e3:.2f} s" if learn else ""
            self._say(f"round done in {out.wall_s:.2f} s{extra}: {out.sent.describe()}")

        return self._run(_rounds.send_round, self.session, changes, ext, steps, k, after, on_done=done)

    def _show_result(self, result: np.ndarray) -> None:
        from napari.layers import Labels

        if self._present(self.result_layer):
            self.result_layer.data = result
            return
        name = f"{self.image_layer.name} dilseg"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = Labels(
            result, name=name, scale=self.image_layer.scale, translate=self.image_layer.translate, opacity=0.8
        )
        layer.contour = 1  # outlines: the image stays visible under the result
        try:
            from napari.utils.colormaps import DirectLabelColormap

            layer.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "cyan"})
        except (ImportError, TypeError, ValueError):  # older napari: the default label colours
            pass
        at = self._index(self.drawing_layer)
        if at is None:
            self.viewer.layers.append(layer)
        else:
            self.viewer.layers.insert(at, layer)  # below the drawing, which stays on top to paint on
        self.viewer.layers.selection.active = self.drawing_layer
        self.result_layer = layer

    def _index(self, layer: Any) -> Optional[int]:
        """Position of ``layer`` in the viewer's layer list (None: removed)."""
        if layer is None:
            return None
        for i, ly in enumerate(self.viewer.layers):
            if _real(ly) is _real(layer):
                return i
        return None

    def _present(self, layer: Any) -> bool:
        return self._index(layer) is not None

    def _show_proposals(self) -> None:
        self.proposal_list.clear()
        for z in self.proposals:
            item = QListWidgetItem(f"slice {z}")
            item.setData(Qt.ItemDataRole.UserRole, int(z))
            self.proposal_list.addItem(item)

    def _on_proposal_clicked(self, item: QListWidgetItem) -> None:
        self.go_to(int(item.data(Qt.ItemDataRole.UserRole)))

    def go_to(self, z: int) -> None:
        """Move the view to slice ``z`` of the annotation axis."""
        if self.session is not None:
            _views.go_to_slice(self.viewer, self.image_layer, self.axis, int(z))

    def next_slice(self) -> Optional[int]:
        """Jump to the next proposed slice that is neither drawn nor sent; returns it."""
        if self.session is None or not self.proposals:
            self._say("no proposals yet: mark the extent or send slices", error=self.session is not None)
            return None
        done = set(self.book.sent) | set(self.book.drawn(self.drawing_layer.data)) | self.book.empty
        todo = [z for z in self.proposals if z not in done]
        if not todo:
            self._say("every proposed slice is drawn: Send slices")
            return None
        z = todo[0]
        self.proposal_list.setCurrentRow(self.proposals.index(z))
        self.go_to(z)
        self._say(f"slice {z}: draw the object (or Mark slice empty)")
        return z

    def commit_case(self) -> Any:
        """Commit the case (with the result layer as the final mask when checked)."""
        if self.session is None:
            self._say("no case open", error=True)
            return None
        final = None
        if self.final_check.isChecked() and self.result_layer is not None:
            final = np.asarray(self.result_layer.data).copy()
        session = self.session

        def done(status: _rounds.EngineStatus) -> None:
            self.session = None
            self.book = None
            self.proposals = []
            self._show_proposals()
            self._show_status(status)
            self.case_label.setText("committed: open the next case")
            self._say("case committed into the replay buffer")

        return self._run(_rounds.commit, session, final, on_done=done)

    # --- cleanup ------------------------------------------------------------------------------------------
    def _drop_engine(self) -> None:
        session, eng = self.session, self.engine
        self.session = self.engine = None
        try:
            if session is not None and not _closed(session):
                session.close()
        finally:
            if eng is not None and self._owns_engine:
                eng.close()

    def shutdown(self) -> None:
        """Wait for a running call, close the session (no commit) and the engine."""
        if self.worker is not None:
            from napari.qt.threading import wait_for_workers_to_quit

            self.worker.quit()
            wait_for_workers_to_quit(msecs=60_000)
            self.worker = None
        self._drop_engine()
