"""The command line that writes the digit scenes as COCO and Cityscapes files (the writers
themselves are read back in tests/test_data_coco.py and tests/test_data_cityscapes.py)."""

from __future__ import annotations

import json

from involution.data.scene_files import main


def test_the_command_line_writes_both_formats(tmp_path, capsys) -> None:
    sizes = ["--train-size", "2", "--val-size", "1", "--test-size", "1", "--canvas-size", "48"]
    assert main(["write-coco", str(tmp_path / "coco"), *sizes, "--max-digit-size", "24"]) == 0
    annotations = json.loads((tmp_path / "coco/annotations/instances_val2017.json").read_text())
    assert annotations["images"][0] == {
        "id": 1,
        "file_name": "000000000001.png",
        "height": 48,
        "width": 48,
    }
    assert (tmp_path / "coco/train2017/000000000002.png").is_file()
    assert main(["write-cityscapes", str(tmp_path / "city"), *sizes, "--max-digit-size", "24"]) == 0
    assert len(list((tmp_path / "city/gtFine/test/scenes").glob("*_gtFine_labelIds.png"))) == 1
    assert "wrote" in capsys.readouterr().out
    assert main(["write-coco", str(tmp_path / "bad"), "--canvas-size", "16"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: data.max_digit_size=32 must be <= data.canvas_size=16"]
