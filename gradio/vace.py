r"""Gradio demo: VACE video creation and editing (Wan2.1-VACE-14B, or -1.3B).

    python gradio/vace.py --ckpt_dir ./Wan2.1-VACE-14B
    python gradio/vace.py --model_name vace-1.3B --ckpt_dir ./Wan2.1-VACE-1.3B

(The official demo's file name and flags.) The page and its logic live in wan_demo.py beside
this file; --help lists the options.
"""

import wan_demo

if __name__ == "__main__":
    wan_demo.main("vace-14B")
