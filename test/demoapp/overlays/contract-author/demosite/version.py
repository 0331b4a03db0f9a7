VERSION = "contract-author"
